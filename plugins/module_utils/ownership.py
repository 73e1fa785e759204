# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What root creates below a directory another account owns stays that account's.

The install role gives ``state_dir``, ``log_dir``, the spool and a filesystem repository to the
pgsafe user (PostgreSQL's account): timers, cron and ``archive_command`` run as that user. The
playbooks run the same engine as root (``become``). Without this, the first root run would leave
root-owned ``locks/``, ``metrics/``, state files and backup directories behind, and every later
run of the pgsafe user (the next WAL segment included) would fail with "Permission denied".

So, run as root, a new file or directory takes the owner and group of the directory it is made
in, when that directory does not belong to root. Run as any other user nothing changes (a user
cannot give files away, and its files are already its own).
"""

from __future__ import annotations

import os

Owner = tuple  # (uid, gid)


def inherited_owner(directory: str) -> Owner | None:
    """The (uid, gid) root's new entries in ``directory`` should get, or None to leave them as made."""
    if os.geteuid() != 0:
        return None
    try:
        status = os.stat(directory)
    except OSError:
        return None
    if status.st_uid == 0:
        return None
    return status.st_uid, status.st_gid


def hand_over(path: str, owner: Owner | None) -> None:
    """Give ``path`` (not following a symlink) to ``owner``; None leaves it. Best effort: chown as root
    only fails where root is not root (NFS root_squash), and there the file is not root's either."""
    if owner is None:
        return
    try:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)
    except OSError:
        pass


def hand_over_fd(fd: int, owner: Owner | None) -> None:
    """``hand_over`` for a file just opened (before it gets its final name)."""
    if owner is None:
        return
    try:
        os.fchown(fd, owner[0], owner[1])
    except OSError:
        pass


def make_dirs(path: str, mode: int) -> None:
    """Create ``path`` and its missing parents with exactly ``mode`` each (os.makedirs sets only the
    leaf's, and the umask narrows it), each handed to the owner of the directory it is made in."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        owner = inherited_owner(os.path.dirname(directory))
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # a concurrent writer made it first
        os.chmod(directory, mode)
        hand_over(directory, owner)
