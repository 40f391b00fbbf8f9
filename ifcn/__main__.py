import signal
import sys

# Until `ifcn.cli.main` installs its handlers, Ctrl-C ends the process as SIGTERM does, without
# Python's KeyboardInterrupt traceback; they are put back to this when it returns.
signal.signal(signal.SIGINT, signal.SIG_DFL)

from ifcn.cli import main  # noqa: E402

sys.exit(main())
