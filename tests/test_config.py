"""The config file: every problem named by its path, secrets from the environment, bad configs refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.proxy import run_cli
from tokenyard.config import load_config, parse_config
from tokenyard.errors import ConfigError

GOOD = """
backends:
  vllm-a:
    kind: dedicated
    base_url: http://10.0.0.5:8000/v1
    api_key: ${VLLM_KEY}
    gpu_type: H100-80GB
    gpus_per_replica: 2
    replicas: 3
    gpu_hour_price: 2.49
    max_concurrency: 32
  openai:
    kind: serverless
    base_url: https://api.openai.com/v1/
    api_key: ${OPENAI_API_KEY:-sk-default-from-file}
    prices: {input_per_1m: 0.15, cached_input_per_1m: 0.075, output_per_1m: 0.60}
    rpm: 500
models:
  llama: {deployments: [vllm-a, openai]}
keys:
  team-a: {key: sk-team-a-123456, models: [llama]}
"""

BAD = """
server: {port: 99999, surprise: 1}
backends:
  vllm-a:
    kind: dedicated
    base_url: ftp://nowhere
    gpu_type: H100-80GB
    gpus_per_replica: 0
    replicas: 1
    gpu_hour_price: 0
    max_concurrency: 8
  openai:
    kind: serverles
    base_url: https://api.openai.com/v1
  sl:
    kind: serverless
    base_url: https://x.example/v1
    gpu_hour_price: 3
    prices: {input_per_1m: -1}
models:
  llama: {deployments: [vllm-a, missing-backend]}
  empty: {deployments: []}
keys:
  team-a: {key: short, models: [nope]}
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return dict(caught.value.problems)


def test_a_good_config_loads_with_secrets_from_the_environment() -> None:
    config = parse_config(GOOD, env={"VLLM_KEY": "sk-vllm-secret"})
    vllm = config.backends["vllm-a"]
    assert vllm.api_key is not None
    assert vllm.api_key.get_secret_value() == "sk-vllm-secret"
    assert "sk-vllm-secret" not in repr(config)
    openai_backend = config.backends["openai"]
    assert openai_backend.api_key is not None
    assert openai_backend.api_key.get_secret_value() == "sk-default-from-file"
    assert openai_backend.base_url == "https://api.openai.com/v1"
    assert config.models["llama"].deployments == ["vllm-a", "openai"]


def test_every_problem_is_named_by_its_path() -> None:
    problems = problems_of(BAD)
    assert problems["server.port"] == "must be <= 65535"
    assert problems["server.surprise"] == "unknown field"
    assert problems["backends.vllm-a.base_url"] == "must be an http:// or https:// URL"
    assert problems["backends.vllm-a.gpus_per_replica"] == "must be > 0"
    assert problems["backends.vllm-a.gpu_hour_price"] == "must be > 0"
    assert problems["backends.openai.kind"].startswith("must be one of 'serverless', 'dedicated'")
    assert problems["backends.sl.prices.input_per_1m"] == "must be >= 0"
    assert problems["models.empty.deployments"] == "must not be empty"
    assert problems["keys.team-a.key"] == "must be at least 8 characters"


def test_cross_references_are_checked_once_the_shapes_are_right() -> None:
    text = """
backends:
  a: {kind: serverless, base_url: "http://127.0.0.1:1/v1"}
  b: {kind: batch, base_url: "http://127.0.0.1:1/v1"}
  d: {kind: dedicated, base_url: "http://127.0.0.1:1/v1", gpu_type: L4, gpus_per_replica: 1, replicas: 1}
models:
  m: {deployments: [a, nope, b]}
keys:
  one: {key: sk-same-key-1, models: [m, other]}
  two: {key: sk-same-key-1}
"""
    problems = problems_of(text)
    assert problems["backends.d"] == "a dedicated backend needs gpu_hour_price, max_concurrency"
    text = text.replace(
        ", gpu_type: L4, gpus_per_replica: 1, replicas: 1}",
        ", gpu_type: L4, gpus_per_replica: 1, replicas: 1, gpu_hour_price: 1, max_concurrency: 4}",
    )
    problems = problems_of(text)
    assert problems == {
        "models.m.deployments.1": "unknown backend 'nope'",
        "models.m.deployments.2": "backend 'b' is kind batch: it cannot serve real-time",
        "keys.one.models.1": "unknown model 'other'",
        "keys.two.key": "same key as keys.one",
    }


def test_gpu_fields_belong_to_dedicated_backends_and_base_url_or_simulator_is_required() -> None:
    problems = problems_of("""
backends:
  a: {kind: serverless, gpu_hour_price: 2, replicas: 1}
  b: {kind: serverless, base_url: "http://x/v1", simulator: {mode: serverless}}
models: {m: {deployments: [a, b]}}
""")
    assert problems["backends.a"] == (
        "give exactly one of base_url and simulator; "
        "replicas, gpu_hour_price only apply to dedicated backends"
    )
    assert problems["backends.b"] == "give exactly one of base_url and simulator"


def test_an_unset_environment_variable_is_named_without_its_value() -> None:
    problems = problems_of(GOOD)
    assert problems == {"backends.vllm-a.api_key": "environment variable VLLM_KEY is not set"}


def test_a_secret_can_never_change_the_yaml_structure() -> None:
    tricky = "sk-x\n  evil: true\nkeys: {}"
    config = parse_config(GOOD, env={"VLLM_KEY": tricky})
    vllm_key = config.backends["vllm-a"].api_key
    assert vllm_key is not None
    assert vllm_key.get_secret_value() == tricky


def test_no_keys_means_loopback_only() -> None:
    text = GOOD.split("keys:")[0] + "server: {host: 0.0.0.0}\n"
    problems = problems_of(text, env={"VLLM_KEY": "k"})
    assert "server.host" in problems
    assert "loopback" in problems["server.host"]


def test_invalid_yaml_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    problems = problems_of("backends: [unclosed")
    [(where, message)] = problems.items()
    assert where.startswith("line ")
    assert message.startswith("not valid YAML")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.yaml")


def test_the_built_in_quick_start_config_is_valid_and_open_on_loopback_only() -> None:
    config = load_config(None, env={})
    assert config.server.host == "127.0.0.1"
    assert not config.keys
    assert all(b.simulator is not None for b in config.backends.values())
    kinds = {b.kind for b in config.backends.values()}
    assert kinds == {"dedicated", "dedicated_serverless", "serverless", "batch"}


def test_the_example_configs_in_the_repo_are_valid() -> None:
    folder = Path(__file__).parent.parent / "config"
    examples = sorted(set(folder.glob("*.yaml")) - {folder / "catalog.yaml"})  # the catalog is no config
    assert examples
    env = {
        "OPENAI_API_KEY": "sk-1",
        "VLLM_API_KEY": "sk-2",
        "TEAM_A_KEY": "sk-team-a-1",
        "TEAM_B_KEY": "sk-team-b-1",
        "TOGETHER_API_KEY": "sk-3",
        "TOKENYARD_ADMIN_KEY": "sk-admin-1",
        "ANTHROPIC_API_KEY": "sk-ant-1",
        "AZURE_OPENAI_API_KEY": "az-1",
    }
    for example in examples:
        load_config(example, env=env)


def test_check_config_lists_every_error_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert "backends.vllm-a.gpu_hour_price: must be > 0" in result.stderr
    assert "models.llama.deployments.1" not in result.stderr  # cross-references wait for valid shapes
    assert "Traceback" not in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.replace("${VLLM_KEY}", "sk-inline"))
    ok = run_cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout


def test_serve_refuses_a_bad_config_the_same_way(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = run_cli("serve", "--config", str(bad), "--port", str(free_port()))
    assert result.returncode == 1
    assert "backends.vllm-a.gpu_hour_price: must be > 0" in result.stderr


def test_serve_refuses_to_open_an_unauthenticated_proxy_beyond_loopback() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 1
    assert "server.host" in result.stderr


def test_help_is_readable() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "check-config", "simulate"):
        assert command in result.stdout


def test_gpu_figures_are_bounded_so_costs_stay_exact() -> None:
    problems = problems_of("""
backends:
  d: {kind: dedicated, base_url: "http://x/v1", gpu_type: H100, gpus_per_replica: 64, replicas: 5000,
      gpu_hour_price: 99, max_concurrency: 8}
models: {m: {deployments: [d]}}
meter: {store: "memcached://nope", flush_interval_s: 0}
""")
    assert problems["backends.d.gpus_per_replica"] == "must be <= 16"
    assert problems["backends.d.replicas"] == "must be <= 1000"
    assert problems["backends.d.gpu_hour_price"] == "must be <= 30"
    assert problems["meter.flush_interval_s"] == "must be > 0"
    assert problems["meter.store"].startswith("must be redis://")
