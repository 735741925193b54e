"""Configuration: environment overrides, ${ENV} interpolation in luigi.cfg, secrets kept out of logs."""

from __future__ import annotations

import subprocess
import sys

from stockpipe import config
from stockpipe.services.redis_sync import redact


def test_environment_overrides_the_file(pipeline, monkeypatch):
    monkeypatch.setenv("STOCKPIPE_STORE_URL", "duckdb:///elsewhere.duckdb")
    monkeypatch.setenv("STOCKPIPE_SOURCE", "csv")
    monkeypatch.setenv("STOCKPIPE_REDIS_URL", "rediss://:pw@cache:6380/2")
    assert config.store_url() == "duckdb:///elsewhere.duckdb"
    assert config.source_name() == "csv"
    assert config.redis_url() == "rediss://:pw@cache:6380/2"


def test_luigi_cfg_interpolates_environment_variables_and_secrets_are_redacted(tmp_path):
    (tmp_path / "luigi.cfg").write_text(
        "[stockpipe]\nstore_url = postgresql+psycopg2://app:${DB_PASSWORD}@db:5432/prod\n"
    )
    script = ("from stockpipe import config; from stockpipe.store import open_store; "
              "print(config.store_url()); print(repr(open_store(config.store_url())))")
    env = {"PATH": "/usr/bin:/bin", "DB_PASSWORD": "s3cr3t", "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg")}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    url, shown = out.splitlines()
    assert url == "postgresql+psycopg2://app:s3cr3t@db:5432/prod"
    assert "s3cr3t" not in shown and "app:***@db" in shown
    assert redact("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"


def test_tests_read_neither_the_checkouts_luigi_cfg_nor_the_users_stockpipe_variables():
    """tests/conftest.py's isolation: the checkout's luigi.cfg (store_url, min_symbols = 100, luigid on
    localhost) and a shell's STOCKPIPE_REDIS_URL would otherwise change what a test runs against."""
    import os
    from pathlib import Path

    import luigi.configuration

    checkout = Path(__file__).resolve().parents[1]
    assert Path.cwd().resolve() != checkout and not (Path.cwd() / "luigi.cfg").exists()
    parser = luigi.configuration.get_config()
    assert not parser.has_option("stockpipe", "store_url") and not parser.has_option("core", "scheduler_host")
    assert config.stockpipe().min_symbols == 10  # the package's default, not the checkout's 100
    assert [k for k in os.environ if k.startswith("STOCKPIPE_") and not k.startswith("STOCKPIPE_TEST_")] == []
    assert config.redis_url() == ""
