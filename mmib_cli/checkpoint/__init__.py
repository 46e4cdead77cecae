"""mmib_cli.checkpoint"""
