"""tests/test_orchestration.py's run on the PostgreSQL profile (`control_plane: {database: postgres}`): the Prefect
server's and MLflow's records in the local PostgreSQL, not in SQLite files."""

import pytest

from tests.support.orchestration import deploy_and_run


@pytest.mark.slow
def test_deploy_and_run_protect_bundle_through_the_api_on_postgres(region_config, tmp_path):
    deploy_and_run(region_config, tmp_path, "postgres")
