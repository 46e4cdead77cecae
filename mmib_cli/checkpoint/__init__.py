"""Model assembly: one checkpoint directory <-> a loaded model (`assemble`), `--model` -> the loaded bundle of task
models (`bundle`), base encoders (`encoders`) and averaging of continuations (`averaging`). Where checkpoint files
come from and how they are laid out on disk is `mmib_cli.storage`.
"""
