"""`fluidfed hub` reading its file: relative paths are the file's, as in every other file."""

import argparse
from pathlib import Path

from hub import commands


def test_relative_paths_in_the_hub_file_are_taken_from_its_directory(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "hub.toml"
    conf.parent.mkdir()
    conf.write_text(
        '[hub]\ndata_dir = "../state"\nadmin_token_file = "token"\n'
        'metrics_token_file = "metrics-token"\n'
        'tls_cert_file = "/abs/tls.crt"\ntls_key_file = "tls.key"\n'
    )
    cfg = commands._hub_config(argparse.Namespace(config=str(conf)))
    assert cfg.data_dir == str(tmp_path / "etc" / ".." / "state")
    assert cfg.admin_token_file == str(tmp_path / "etc" / "token")
    assert cfg.metrics_token_file == str(tmp_path / "etc" / "metrics-token")
    assert cfg.tls_cert_file == "/abs/tls.crt"  # absolute: as written
    assert cfg.tls_key_file == str(tmp_path / "etc" / "tls.key")
    assert cfg.client_ca_file == ""  # unset stays unset
