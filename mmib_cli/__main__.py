"""`python -m mmib_cli` runs the `mmib` command line."""
from mmib_cli.signals import Interrupted, install

if __name__ == "__main__":
    from mmib_cli.stdio import guard_standard_streams

    guard_standard_streams()  # before anything opens a file: a closed 0/1/2 must not become an output's descriptor
    install()  # before the heavy imports: a signal during start-up ends the process quietly
    try:
        from mmib_cli.cli import main
    except Interrupted as exc:
        raise SystemExit(128 + exc.signum) from None
    main()
