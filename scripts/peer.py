"""whisper.cpp's own command-line tool (whisper-cli 1.9.3), the peer the benchmarks compare
Earshot against and take independent word times from; built once by
../shared/peers/build-whisper-cli.sh. Must not be imported by anything but the bench scripts."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def whisper_cli(out_dir):
    """The path of whisper-cli in `out_dir`, built there first if it is not (a few minutes)."""
    cli = Path(out_dir) / "whisper-cli"
    if not cli.is_file():
        script = ROOT.parent / "shared" / "peers" / "build-whisper-cli.sh"
        print(f"building whisper-cli with {script} into {out_dir} (a few minutes)", file=sys.stderr)
        subprocess.run([str(script), str(out_dir)], check=True, stderr=subprocess.DEVNULL)
    return cli
