"""The sealing box without `cryptography` loaded: a proxy worker with a database makes the box at start
and most never open a credential, while the library's Rust extension is ~6 MiB of resident memory."""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from nexus.auth.sealing import SealingError, SecretBox, load_box, new_key


def test_the_proxy_and_its_box_do_not_load_cryptography(tmp_path: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "import nexus.proxy.app\n"
        "from nexus.auth.sealing import load_box\n"
        f"load_box(None, pathlib.Path({str(tmp_path)!r}))\n"
        "assert 'cryptography' not in sys.modules, 'cryptography was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "secret.key").exists()


def test_keys_are_checked_as_fernet_checks_them_and_still_seal() -> None:
    """The box checks a key without `cryptography`: it accepts exactly what `Fernet(key)` accepts
    (compared on keys mutated at random: a character changed, dropped or added, padding removed,
    whitespace, other lengths), and a box of a good key seals and opens."""
    key = new_key()
    box = SecretBox((key.encode(),), "test")
    assert box.open(box.seal(b"secret")) == b"secret"
    rng = random.Random(13)
    alphabet = b"ABCXYZabcxyz0189-_=+/ \n\t\r\x0b\x0c.!"
    for _ in range(3000):
        k = bytearray(Fernet.generate_key())
        op = rng.randrange(5)
        if op == 0:
            k[rng.randrange(len(k))] = rng.choice(alphabet)
        elif op == 1:
            del k[rng.randrange(len(k))]
        elif op == 2:
            k.insert(rng.randrange(len(k) + 1), rng.choice(alphabet))
        elif op == 3:
            k = bytearray(k.rstrip(b"="))
        else:
            k = bytearray(base64.urlsafe_b64encode(os.urandom(rng.randrange(28, 36))))
        try:
            Fernet(bytes(k))
            fernet_accepts = True
        except ValueError:
            fernet_accepts = False
        try:
            SecretBox((bytes(k),), "test")
            box_accepts = True
        except SealingError as exc:
            assert "is not a Fernet key" in str(exc)
            box_accepts = False
        assert box_accepts == fernet_accepts, bytes(k)
    good = Fernet.generate_key()
    assert load_box(good.decode(), Path("/nonexistent")).key_id == SecretBox((good,), "x").key_id
