"""A malformed or unusable proxy (given as ``proxy=`` or from the environment) is a
ValueError naming where it came from, at construction: never a raw httpx.InvalidURL or
ImportError, and never at the first request."""

from __future__ import annotations

import sys

import pytest

from camb_async import AsyncCambClient

from ..conftest import API_KEY

BASE = "https://api.example.test"


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.mark.parametrize("proxy", ["http://[::1", "http://h:port"])
def test_malformed_proxy_argument(no_proxy_env: pytest.MonkeyPatch, proxy: str) -> None:
    with pytest.raises(ValueError, match=r"^proxy= is not a valid proxy URL"):
        AsyncCambClient(api_key=API_KEY, base_url=BASE, proxy=proxy)


@pytest.mark.parametrize("value", ["::::", "http://[::1"])
def test_malformed_proxy_from_the_environment(no_proxy_env: pytest.MonkeyPatch, value: str) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", value)
    with pytest.raises(ValueError, match=r"HTTPS_PROXY .* is not a valid proxy URL"):
        AsyncCambClient(api_key=API_KEY, base_url=BASE)


@pytest.mark.parametrize("url", ["socks5://u:p@127.0.0.1:9", "socks5h://10.0.0.1:1080"])
def test_socks_proxy_without_socksio(no_proxy_env: pytest.MonkeyPatch, url: str) -> None:
    no_proxy_env.setitem(sys.modules, "socksio", None)  # as if not installed
    with pytest.raises(ValueError, match=r"^proxy= .*SOCKS.*pip install httpx\[socks\]"):
        AsyncCambClient(api_key=API_KEY, base_url=BASE, proxy=url)
    no_proxy_env.setenv("ALL_PROXY", url)
    with pytest.raises(ValueError, match=r"ALL_PROXY\) environment variable .*httpx\[socks\]"):
        AsyncCambClient(api_key=API_KEY, base_url=BASE)
