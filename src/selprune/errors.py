"""What can go wrong, as exception types, and the exit status the CLI gives each (README: Reliability).

    0    success
    1    an internal error: a bug in selprune (the traceback is shown, with a line saying so)
    2    bad input: the message says what is wrong and how to fix it       (UserError)
    3    out of memory: the message says which setting to lower            (OutOfMemory, MemoryError)
    4    the environment failed: disk full, no permission, I/O error       (OSError)
    130  interrupted (Ctrl-C); 143 terminated (SIGTERM). Finished steps are kept: continue with --resume.
"""

EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and how to fix it."""


class OutOfMemory(Exception):
    """The device ran out of memory even at one chunk per batch; the message says what to lower."""


class Terminated(BaseException):
    """SIGTERM, raised wherever the program is, so that it unwinds (finally blocks, locks) as on Ctrl-C.

    A BaseException, as KeyboardInterrupt is, so that no `except Exception` swallows it.
    """
