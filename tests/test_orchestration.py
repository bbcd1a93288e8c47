"""The local orchestration stack for real: a Prefect server and worker started by llmdr, the deployments of
prefect.yaml, and protect-bundle triggered through the API exactly as the UI's Run button does, on SQLite (the
default control-plane database; tests/test_orchestration_pg.py runs the same on the local PostgreSQL)."""

import pytest

from tests.support.orchestration import deploy_and_run


@pytest.mark.slow
def test_deploy_and_run_protect_bundle_through_the_api(region_config, tmp_path):
    deploy_and_run(region_config, tmp_path, "sqlite")
