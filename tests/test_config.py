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
