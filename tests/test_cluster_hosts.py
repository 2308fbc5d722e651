"""Host files, host checks and the direct safetensors writer a dropped-out run saves with."""

import json

import mlx.core as mx
import pytest

from finetune_app.core.cluster.hosts import Host, HostList, read_hostfile, write_hostfile
from finetune_app.core.errors import ConfigError
from helpers import run_cli


def test_hostfile_round_trip_is_mlx_launch_format(tmp_path):
    from mlx._distributed_utils.common import Hostfile

    hosts = HostList((Host("127.0.0.1", ("192.168.1.10",)), Host("studio.local", ("192.168.1.11",))), "ring")
    path = write_hostfile(tmp_path / "hosts.json", hosts)
    assert read_hostfile(path) == hosts
    theirs = Hostfile.from_file(str(path))  # mlx.launch reads the same file
    assert [h.ssh_hostname for h in theirs.hosts] == ["127.0.0.1", "studio.local"] and theirs.backend == "ring"
    (tmp_path / "list.json").write_text(json.dumps([{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}]))
    assert [h.ssh for h in read_hostfile(tmp_path / "list.json").hosts] == ["a", "b"]


@pytest.mark.parametrize("text, field, words", [
    ("{not json", None, "not valid JSON"),
    ('{"hosts": []}', "hosts", "lists no hosts"),
    ('{"hosts": [{"ssh": "a"}, {"ips": ["1.2.3.4"]}]}', "hosts[1].ssh", 'Host 2 has no "ssh" name'),
    ('{"hosts": [{"ssh": "a", "ips": "1.2.3.4"}]}', "hosts[0].ips", '"ips" must be a list'),
    ('{"backend": "carrier-pigeon", "hosts": [{"ssh": "a"}]}', "backend", "Unknown back-end"),
])
def test_bad_hostfile_names_file_and_field(tmp_path, text, field, words):
    path = tmp_path / "hosts.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_hostfile(path)
    assert words in err.value.message and str(path) in err.value.message
    assert err.value.field == field


def test_host_list_problems_say_what_to_fix():
    assert "at least two hosts" in " ".join(HostList((Host("127.0.0.1", ("127.0.0.1",)),)).problems())
    problems = HostList((Host("127.0.0.1", ("127.0.0.1",)), Host("mini.local", ()), Host("x", ("300.1.1.1",)))).problems()
    assert any("Host 2 (mini.local) needs an IP address" in p for p in problems)
    assert any("'300.1.1.1' is not an IP address" in p for p in problems)


def test_hosts_check_cli_finds_missing_data_and_unreachable_hosts(tiny_model, instruction_data, tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
                                           {"ssh": "nosuchhost.invalid", "ips": ["10.255.255.1"]}]}))
    r = run_cli("hosts", "check", "--hostfile", hosts, "--model", tiny_model("llama"), "--data", instruction_data,
                "--timeout", 5)
    assert r.returncode == 5, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ok   rank 0 127.0.0.1:") and "CPU" in lines[0]
    assert lines[1].startswith("FAIL rank 1 nosuchhost.invalid: Cannot reach nosuchhost.invalid over ssh")
    r = run_cli("hosts", "check", "--hostfile", hosts, "--model", tiny_model("llama"), "--data", tmp_path / "nowhere",
                "--json")
    answers = json.loads(r.stdout)
    assert answers[0]["ok"] is False and "has no data at" in answers[0]["problems"][0]
    assert answers[0]["info"]["model"]["found"] is True


def test_direct_writer_matches_mlx_save(tmp_path):
    from finetune_app.core import tensor_files

    arrays = {"w": mx.random.normal((3, 5)).astype(mx.bfloat16), "i": mx.arange(7), "b": mx.array([True, False]),
              "empty": mx.zeros((0, 4)), "f": mx.random.normal((2, 2, 2))}
    mx.eval(arrays)
    tensor_files.save(tmp_path / "direct.safetensors", arrays, {"format": "mlx"}, direct=True)
    back, meta = mx.load(str(tmp_path / "direct.safetensors"), return_metadata=True)
    assert meta == {"format": "mlx"} and back.keys() == arrays.keys()
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape and mx.array_equal(back[k], a).item(), k
