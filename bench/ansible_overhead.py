# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible overhead: playbooks/backup.yml over a generated local inventory vs the CLI.

The same logical backup of a small database, once through ``ansible-playbook`` (one
host, and several hosts run in parallel by Ansible's forks) and once through the host
command (once, and once per host in sequence). Each inventory host is a separate
pgsafe "cluster" name with its own state directory, so their locks do not collide;
they all dump the same bench database.
"""

from __future__ import annotations

import os
import shutil

from bench.common import BUILD, PG_BIN, ROOT, VENV_BIN, log, median, pgsafe_command, run_measured

COLLECTIONS = os.path.join(ROOT, ".build", "collections")


class AnsibleBench:
    def __init__(self, cluster, dbname: str, hosts: int, key_file: str):
        import yaml  # pylint: disable=import-outside-toplevel

        self.cluster = cluster
        self.dbname = dbname
        self.hosts = ["bench%d" % number for number in range(1, hosts + 1)]
        self.home = os.path.join(BUILD, "ansible")
        shutil.rmtree(self.home, ignore_errors=True)
        os.makedirs(self.home, mode=0o700)
        common = {
            "ansible_connection": "local",
            "ansible_python_interpreter": os.path.join(VENV_BIN, "python"),
            "pgsafe_key_file": key_file,
            "pgsafe_encryption": {"key_files": [{"path": key_file}]},
            "pgsafe_compression": {"algorithm": "zstd", "level": 3, "threads": 2},
            "pgsafe_postgres": {"login_host": cluster.host, "port": cluster.port, "login_user": cluster.user},
            "pgsafe_databases": [dbname],
        }
        self.cli_configs = {}
        inventory_hosts = {}
        for host in self.hosts:
            state_dir = os.path.join(self.home, "state", host)
            repository = {"name": "local", "type": "filesystem", "path": os.path.join(self.home, "repo"),
                          "create": True}
            inventory_hosts[host] = {"pgsafe_cluster": host, "pgsafe_state_dir": state_dir,
                                     "pgsafe_repository": repository}
            settings = {"cluster": host, "state_dir": state_dir,
                        "postgres": {"host": cluster.host, "port": cluster.port, "user": cluster.user,
                                     "bin_dir": PG_BIN},
                        "repository": repository, "encryption": common["pgsafe_encryption"],
                        "compression": common["pgsafe_compression"]}
            path = os.path.join(self.home, "%s.yml" % host)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
                yaml.safe_dump(settings, handle, sort_keys=False)
            self.cli_configs[host] = path
        self.inventories = {}
        for count in sorted({1, len(self.hosts)}):
            inventory = {"all": {"vars": common, "hosts": {host: inventory_hosts[host] for host in self.hosts[:count]}}}
            path = os.path.join(self.home, "inventory-%d.yml" % count)
            with open(path, "w", encoding="utf-8") as handle:
                yaml.safe_dump(inventory, handle, sort_keys=False)
            self.inventories[count] = path
        self.env = dict(cluster.env(), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOWS="1",
                        ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_LOCALHOST_WARNING="0",
                        ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_FORKS="5",
                        PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))

    def playbook(self, hosts: int) -> float:
        return run_measured([os.path.join(VENV_BIN, "ansible-playbook"), "-i", self.inventories[hosts],
                             os.path.join(ROOT, "playbooks", "backup.yml")], env=self.env, cwd=ROOT,
                            what="ansible-playbook playbooks/backup.yml (%d host(s))" % hosts).seconds

    def cli(self, hosts: int) -> float:
        total = 0.0
        for host in self.hosts[:hosts]:
            total += run_measured(pgsafe_command() + ["-c", self.cli_configs[host], "backup", "logical", "-d",
                                                      self.dbname, "--json"], env=self.env,
                                  what="pgsafe backup logical (%s)" % host).seconds
        return total

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def run_ansible(cluster, dbname: str, rounds: int, hosts: int, key_file: str) -> dict:
    bench = AnsibleBench(cluster, dbname, hosts, key_file)
    samples: dict[str, list] = {"playbook_1": [], "cli_1": [], "playbook_n": [], "cli_n": []}
    try:
        for number in range(1, rounds + 1):
            log("ansible round %d/%d: playbook (1 host), CLI (1 run), playbook (%d hosts), CLI (%d runs)"
                % (number, rounds, hosts, hosts))
            samples["playbook_1"].append(bench.playbook(1))
            samples["cli_1"].append(bench.cli(1))
            samples["playbook_n"].append(bench.playbook(hosts))
            samples["cli_n"].append(bench.cli(hosts))
    finally:
        bench.cleanup()
    return {"hosts": hosts, "samples": samples,
            "medians": {name: median(values) for name, values in samples.items()}}
