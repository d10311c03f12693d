"""Connection strings: passwords masked in every form, sslmode added once."""

from __future__ import annotations

import pytest

from dagster_project.core.db.pg import DatabaseSetupError, check_reachable, dagster_storage_url, mask_url, with_sslmode


@pytest.mark.parametrize("conninfo", [
    "postgresql://writer:s3cr3tPW@db.example.com:5432/refinery",
    "postgresql://writer@db.example.com/refinery?password=s3cr3tPW&sslmode=require",
    "host=db.example.com user=writer password=s3cr3tPW dbname=refinery",
])
def test_password_is_masked_in_every_form(conninfo):
    masked = mask_url(conninfo)
    assert "s3cr3tPW" not in masked and "***" in masked and "db.example.com" in masked


def test_sslmode_is_added_once_in_both_forms():
    assert with_sslmode("postgresql://u@h/db", "require") == "postgresql://u@h/db?sslmode=require"
    assert with_sslmode("postgresql://u@h/db?sslmode=disable", "require").endswith("sslmode=disable")
    keyvalue = with_sslmode("host=h dbname=db", "require")
    assert "sslmode=require" in keyvalue and "?" not in keyvalue
    assert with_sslmode("host=h sslmode=verify-full", "require") == "host=h sslmode=verify-full"


def test_dagster_url_names_the_psycopg2_driver():
    assert dagster_storage_url("postgresql://u@h/d").startswith("postgresql+psycopg2://")
    assert dagster_storage_url("postgres://u@h/d").startswith("postgresql+psycopg2://")


def test_unreachable_server_is_named_without_its_password():
    with pytest.raises(DatabaseSetupError) as info:
        check_reachable("postgresql://writer:s3cr3tPW@127.0.0.1:1/refinery", "vector store")
    message = str(info.value)
    assert "s3cr3tPW" not in message and "127.0.0.1" in message and "writer:***@" in message
