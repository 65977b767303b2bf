"""drstudio's differentiable rendering library: scene model, Warp stages, renderer, optimization.

Never imports `app`; no GUI dependency."""

import warp as _wp

from . import thread_tape as _thread_tape

# no start-up banner and no per-module compile/load lines on the console
_wp.config.quiet = True
_wp.config.log_level = _wp.LOG_WARNING

# one active wp.Tape per thread (Warp's is process-wide): see renderer/thread_tape.py
_thread_tape.install()
