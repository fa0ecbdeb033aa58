"""Environment diagnostics (`flx doctor`)."""
