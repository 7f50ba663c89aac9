"""CASA imports offline through contimg.casa_env, leaving ~/.casa and the working directory alone."""

import os
import subprocess
import sys


def test_casa_imports_offline_without_touching_home(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTIMG_", "CASA"))}
    env.update({"HOME": str(home), "CONTIMG_CASA_LOGFILE": str(tmp_path / "casa.log"),
                "CONTIMG_CASA_CACHEDIR": str(tmp_path / "cache")})
    code = ("from contimg import casa_env; ct = casa_env.casatools(); casa_env.casatasks(); "
            "import casatools; print(casatools.ctsys.measurespath())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import casadata

    assert os.path.realpath(r.stdout.strip().splitlines()[-1]) == os.path.realpath(casadata.datapath)
    assert not (home / ".casa").exists(), "casa wrote to ~/.casa"
    assert not list(cwd.glob("casa-*.log")), "casa wrote its log into the working directory"
    assert (tmp_path / "casa.log").is_file()
