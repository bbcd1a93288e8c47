"""Data residency at the writing doors, against the session's real SeaweedFS regions, real DVC and a real MLflow
store: a config that load_config would refuse, built without it (``Config.model_validate``: a caller that skips the
loader, or a config changed in memory), still cannot send data out of its jurisdiction. Each door is shown refusing
with nothing written, then passing with the region back in the policy (so the empty listing is not an accident)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmdr.config import Config
from llmdr.config.residency import ResidencyError
from llmdr.repo import ops
from llmdr.storage.factory import open_region
from tests.support.config import fresh_prefix, two_region_yaml

pytestmark = pytest.mark.s3

DVC = str(Path(sys.executable).parent / "dvc")
EU = "    jurisdiction: EU\n    geography: eu-west"
CN = "    jurisdiction: CN\n    geography: Shanghai"


def unchecked(stack, tmp: Path, *, primary: str = EU, secondary: str = CN, extra: str = "") -> Config:
    """The session regions with these jurisdiction lines and an EU-only bundle, validated as a model but not through
    load_config (whose residency check would refuse it)."""
    text = two_region_yaml(stack.primary.port, stack.secondaries[0].port, prefix=fresh_prefix(),
                           bundle="{name: bank-bot, path: bundle, residency: [EU]}", primary_lines=primary,
                           secondary_lines=secondary, extra=extra, state_dir=stack.state_path)
    path = tmp / "llmdr.yaml"
    path.write_text(text)
    cfg = Config.model_validate(yaml.safe_load(text))
    cfg._base_dir, cfg._source_file = tmp, path
    return cfg


def keys_in(cfg: Config, region: str, under: str = "") -> list[str]:
    return [b.key for b in open_region(cfg, cfg.region(region), read_only=True).list(under)]


def write_bundle(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "weights.bin").write_bytes(os.urandom(200_000))
    (root / "config.json").write_text('{"model": "bank-bot"}\n')


def test_replicate_refuses_a_destination_outside_the_policy(stack, tmp_path):
    cfg = unchecked(stack, tmp_path)
    write_bundle(tmp_path / "bundle")
    snap = ops.snapshot_bundle(cfg)  # the EU primary is allowed
    assert keys_in(cfg, "primary")
    with pytest.raises(ResidencyError) as exc:
        ops.replicate(cfg, "latest", to="secondary")
    msg = str(exc.value)
    assert msg.startswith("replicate latest of 'bank-bot' to region 'secondary': bundle 'bank-bot' may be stored "
                          "only in [EU] (its residency policy), and region 'secondary' (jurisdiction CN, Shanghai)")
    assert exc.value.exit_code == 2
    assert keys_in(cfg, "secondary") == []  # nothing written, not even a lock or the repository config
    cfg.regions[1].jurisdiction = "eu"  # back in the policy: the same call copies
    [res] = ops.replicate(cfg, "latest", to="secondary")
    assert res.snapshot_id == snap.snapshot_id and keys_in(cfg, "secondary")


def test_snapshot_and_checkpoints_refuse_a_primary_outside_the_policy(stack, tmp_path):
    cfg = unchecked(stack, tmp_path, primary="", secondary=EU,
                    extra="checkpoints: {path: ckpt}")  # the primary declares no jurisdiction
    write_bundle(tmp_path / "bundle")
    write_bundle(tmp_path / "ckpt" / "checkpoint-100")
    with pytest.raises(ResidencyError, match="region 'primary' \\(no jurisdiction declared\\) is outside it"):
        ops.snapshot_bundle(cfg)
    with pytest.raises(ResidencyError, match="^protect the checkpoints of 'bank-bot': "):
        ops.protect_checkpoints(cfg)
    assert keys_in(cfg, "primary") == [] and keys_in(cfg, "secondary") == []


@pytest.fixture
def dvc_project(stack, tmp_path, monkeypatch):
    """A real git+DVC repository holding one CSV, with an llmdr config whose dataset must stay in the EU."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "loans.csv").write_text("id,amount\n" + "".join(f"{i},{i * 7}\n" for i in range(200)))
    for args in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "add", "-q", "data/loans.csv"]):
        subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    return tmp_path


def test_dvc_push_refuses_a_region_outside_the_dataset_policy(stack, dvc_project):
    from llmdr.lineage.datasets import present, push, push_all

    cfg = unchecked(stack, dvc_project, secondary="    jurisdiction: US",
                    extra="datasets:\n  - {name: loans, path: data/loans.csv, residency: [EU]}")
    cfg.bundle.residency = None  # only the dataset's own policy is in force here
    loans = cfg.datasets[0]
    with pytest.raises(ResidencyError) as exc:
        push(cfg, loans, "secondary")
    assert str(exc.value).startswith("dataset 'loans': DVC push to region 'secondary': dataset 'loans' may be "
                                     "stored only in [EU] (its residency policy), and region 'secondary' "
                                     "(jurisdiction US) is outside it")
    assert keys_in(cfg, "secondary") == []
    with pytest.raises(ResidencyError):  # every region tried, the refusal raised: the EU primary got its copy
        push_all(cfg, loans)
    assert present(cfg, loans, "primary") and keys_in(cfg, "secondary") == []
    cfg.regions[1].jurisdiction = "EU"
    assert push(cfg, loans, "secondary").pushed == 1 and present(cfg, loans, "secondary")


def test_mlflow_artifacts_refuse_a_region_outside_the_policy(stack, tmp_path):
    from llmdr.lineage import drills, tracking
    from llmdr.lineage.training import record_training_run

    db = tmp_path / "mlflow.db"
    cfg = unchecked(stack, tmp_path)  # the DR region, where drill artifacts go, is in China
    with pytest.raises(ResidencyError, match="^MLflow artifacts to region 'secondary': bundle 'bank-bot'"):
        tracking.target_for(cfg, tracking_uri=f"sqlite:///{db}")
    cfg.regions[0].jurisdiction = None  # training runs go to the primary: refused before the store is touched
    with pytest.raises(ResidencyError, match="^MLflow artifacts to region 'primary'"):
        record_training_run(cfg, checkpoint=str(tmp_path / "checkpoint-1"), snapshot_id="c" * 64, step=1, params={},
                            datasets=[], hardware={}, tracking_uri=f"sqlite:///{db}")
    assert not db.exists() and keys_in(cfg, "secondary") == [] and keys_in(cfg, "primary") == []
    cfg.regions[1].jurisdiction = "EU"  # in the policy: the drill's artifacts reach the DR bucket
    from tests.test_tracking import report_folder, sample_record

    target = tracking.target_for(cfg, tracking_uri=f"sqlite:///{db}")
    drills.log_drill(target, sample_record("bank-bot"), report_folder(tmp_path))
    assert any(k.startswith("mlflow/") for k in keys_in(cfg, "secondary"))


def s3_client(cfg: Config, region: str):
    """A plain boto3 client on a region, to read the object headers llmdr's store does not expose."""
    import boto3
    from botocore.config import Config as BotoConfig

    from llmdr.storage.credentials import resolve_keys

    r = cfg.region(region)
    k = resolve_keys(cfg, r)
    return boto3.client("s3", endpoint_url=r.endpoint, aws_access_key_id=k.access_key_id,
                        aws_secret_access_key=k.secret_access_key, region_name=r.s3_region,
                        config=BotoConfig(s3={"addressing_style": "path"}))


def test_server_side_encryption_settings_reach_dvc_and_mlflow_uploads(stack, dvc_project, monkeypatch):
    """What docs/guide/residency.md tells users to do for DVC and MLflow objects (llmdr does not encrypt them
    client-side): the DVC remote's own `sse` setting and MLflow's MLFLOW_S3_UPLOAD_EXTRA_ARGS. Both survive llmdr's
    calls (its DVC override sets only URL, endpoint and keys; its MLflow environment leaves that variable alone):
    the objects come back with ServerSideEncryption set. SeaweedFS here does SSE-S3 (AES256), not SSE-KMS."""
    from llmdr.lineage import drills, tracking
    from llmdr.lineage.datasets import configure_remotes, push
    from llmdr.lineage.dvcrepo import remote_url
    from tests.test_tracking import report_folder, sample_record

    cfg = unchecked(stack, dvc_project, secondary=EU,
                    extra="datasets:\n  - {name: loans, path: data/loans.csv, residency: [EU]}")
    loans = cfg.datasets[0]
    configure_remotes(cfg, dvc_project)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([DVC, "remote", "modify", "llmdr-secondary", "sse", "AES256"], cwd=dvc_project, env=env,
                   check=True, capture_output=True, timeout=120)
    assert push(cfg, loans, "secondary").pushed == 1 and push(cfg, loans, "primary").pushed == 1
    s3 = {r: s3_client(cfg, r) for r in ("primary", "secondary")}

    def sse(region: str, prefix: str) -> set:
        bucket = cfg.region(region).bucket
        keys = [o["Key"] for o in s3[region].list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        assert keys, f"nothing under {prefix} in {region}"
        return {s3[region].head_object(Bucket=bucket, Key=k).get("ServerSideEncryption") for k in keys}

    base = cfg.regions[0].prefix + "/"
    assert remote_url(cfg.regions[1]).endswith(base + "dvc")
    assert sse("secondary", base + "dvc/") == {"AES256"}
    assert sse("primary", base + "dvc/") == {None}  # the remote without the setting: not encrypted by the store

    monkeypatch.setenv("MLFLOW_S3_UPLOAD_EXTRA_ARGS", '{"ServerSideEncryption": "AES256"}')
    target = tracking.target_for(cfg, tracking_uri=f"sqlite:///{dvc_project / 'mlflow.db'}")
    drills.log_drill(target, sample_record("bank-bot"), report_folder(dvc_project / "r"))
    assert sse("secondary", base + "mlflow/") == {"AES256"}


def test_drill_report_is_not_stored_in_the_regions_when_one_is_outside(stack, tmp_path):
    """The signed drill report goes to every region's store; with one outside the policy it goes to none (the
    report stays in the local folder) and publication says why, instead of failing the drill."""
    from llmdr.drill.publish import store_everywhere

    cfg = unchecked(stack, tmp_path)
    folder = tmp_path / "reports" / "drills" / "20261204T120000Z-abcdef"
    folder.mkdir(parents=True)
    (folder / "evidence.json").write_text('{"drill": "evidence"}\n')
    out = store_everywhere(cfg, folder)
    assert out["error"].startswith("ResidencyError: store drill report 20261204T120000Z-abcdef in every region: "
                                   "bundle 'bank-bot' may be stored only in [EU]")
    assert keys_in(cfg, "primary") == [] and keys_in(cfg, "secondary") == []
    assert (folder / "evidence.json").is_file()
