# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``make bench``: pgsafe measured side by side with pg_dump, the seed scripts and pgBackRest.

Not part of ``make test``: it builds a ~1 GB dataset and takes several minutes. Entry
point: ``bench/run.py``; the claims are ratios measured in one run (docs/performance.md).
"""
