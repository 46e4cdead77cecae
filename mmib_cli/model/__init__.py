"""Pure-torch MMIB model: configuration, modules and the CRF layer (no file or network IO)."""
from __future__ import annotations

from mmib_cli.model.configuration import NER_LABELS, NUM_WORD_SHAPES, RE_LABELS, MMIBConfig
from mmib_cli.model.crf import LinearChainCRF, bio_transition_mask
from mmib_cli.model.modeling import MMIBModel, MMIBOutput

__all__ = [
    "MMIBConfig",
    "MMIBModel",
    "MMIBOutput",
    "LinearChainCRF",
    "bio_transition_mask",
    "NER_LABELS",
    "RE_LABELS",
    "NUM_WORD_SHAPES",
]
