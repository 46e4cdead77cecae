"""mmib_cli.io"""
