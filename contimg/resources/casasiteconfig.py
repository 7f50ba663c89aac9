# CASA site configuration used by contimg (see contimg/casa_env.py).
# casaconfig executes this file before ~/.casa/config.py; it is Python, so the
# measures path is taken from the installed `casadata` package at load time.
# Nothing here downloads anything or writes to the user's ~/.casa.
import os as _os

import casadata as _casadata

measurespath = _casadata.datapath
datapath = [_casadata.datapath]
measures_auto_update = False
data_auto_update = False
cachedir = _os.environ.get("CONTIMG_CASA_CACHEDIR", "/tmp/contimg-casa-cache")
logfile = _os.environ.get("CONTIMG_CASA_LOGFILE", "/tmp/contimg-casa.log")
nologfile = _os.environ.get("CONTIMG_CASA_NOLOG", "") == "1"
log2term = False
