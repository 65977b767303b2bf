"""drstudio's differentiable rendering library: scene model, Warp stages, renderer, optimization.

Never imports `app`; no GUI dependency."""

import warp as _wp

# no start-up banner and no per-module compile/load lines on the console
_wp.config.quiet = True
_wp.config.log_level = _wp.LOG_WARNING
