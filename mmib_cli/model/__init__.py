"""Pure-torch MMIB model: configuration, modules and the CRF layer (no file or network IO)."""
