"""42 CFR Part 2: which resources carry substance use disorder information (`sud.py`, from
the code lists of `part2.yaml`), their labels (`labels.py`), labelling them on every write
(`write.py`, called by the write guard) and in stores filled before (`relabel.py`), and
the consent rule that decides to whom they are disclosed (`consent.py`)."""
