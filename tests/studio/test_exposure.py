"""Network exposure: the studio binds to loopback by default and refuses any other address without a login."""
from __future__ import annotations

import http.cookiejar
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from launch import ExposureError, check_exposure, is_loopback, read_auth

from .conftest import ROOT, free_port


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"])
def test_loopback_addresses(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "172.16.0.1", "8.8.8.8",
                                  "example.com", "my-laptop", ""])
def test_other_addresses_need_a_login(host, tmp_path):
    assert not is_loopback(host)
    with pytest.raises(ExposureError, match="--auth"):
        check_exposure(host, None)
    good = tmp_path / "auth.txt"
    good.write_text("# studio users\nada:correct horse\n\nbob:pa:ss\n")
    assert check_exposure(host, good) == [("ada", "correct horse"), ("bob", "pa:ss")]


@pytest.mark.parametrize("content, message", [
    ("", "no user:password"), ("# only a comment\n", "no user:password"), ("ada\n", "line 1"),
    ("ada:\n", "line 1"), (":secret\n", "line 1"), ("ok:fine\nbroken\n", "line 2"),
])
def test_a_bad_auth_file_is_refused_with_the_reason(content, message, tmp_path):
    path = tmp_path / "auth.txt"
    path.write_text(content)
    with pytest.raises(ExposureError, match=message):
        read_auth(path)
    with pytest.raises(ExposureError, match="cannot read"):
        read_auth(tmp_path / "missing.txt")


def test_launch_refuses_a_public_address_without_a_login_before_touching_anything(tmp_path):
    gallery = tmp_path / "gallery"
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--host", "0.0.0.0", "--no-browser",
                           "--gallery-dir", str(gallery)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a login" in proc.stderr and "--auth" in proc.stderr
    assert "Traceback" not in proc.stderr and not gallery.exists()


def test_with_a_login_on_all_interfaces_the_studio_answers_only_after_login(tiny_models_dir, tmp_path):
    auth = tmp_path / "auth.txt"
    auth.write_text("ada:correct horse\n")
    port = free_port()
    log = (tmp_path / "studio.log").open("w")
    cmd = [sys.executable, str(ROOT / "launch.py"), "--host", "0.0.0.0", "--auth", str(auth), "--port", str(port),
           "--models-dir", str(tiny_models_dir), "--gallery-dir", str(tmp_path / "gallery"), "--no-browser",
           "--no-hf-cache", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (with a login page or an error): it is up
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError((tmp_path / "studio.log").read_text()[-2000:])
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as info:  # the app's config (and API) need the login
            urllib.request.urlopen(base + "/config", timeout=10)
        assert info.value.code in (401, 403)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with pytest.raises(urllib.error.HTTPError):
            opener.open(base + "/login", data=urllib.parse.urlencode({"username": "ada", "password": "wrong"}).encode(),
                        timeout=10)
        opener.open(base + "/login", data=urllib.parse.urlencode({"username": "ada",
                                                                  "password": "correct horse"}).encode(), timeout=10)
        assert opener.open(base + "/config", timeout=10).status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
