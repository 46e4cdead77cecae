"""mmib_cli.data"""
