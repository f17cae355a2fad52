"""A foreground OpenBao dev server with keymgmt/ mounted, for trying commands by hand."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys

from harness import ROOT, VENV_BIN, BaoServer, install_plugin, kill_plugins, plugin_pids, wait_for


def main() -> int:
    port = int(os.environ.get("KEYMGMT_DEV_PORT", "8200"))
    tmp = ROOT / ".tmp" / "dev"
    tmp.parent.mkdir(exist_ok=True)
    # One dev server per checkout: a second would wipe the first one's plugin dir.
    lock = open(ROOT / ".tmp" / "dev.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"dev-server: another dev server is using {tmp}", file=sys.stderr)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)  # fresh plugin dir and log on every start
    # Treat `kill <pid>` like Ctrl-C, so the server is always stopped cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    srv = BaoServer(tmp, port=port)
    try:
        install_plugin(srv)
        print(f"export VAULT_ADDR={srv.addr} VAULT_TOKEN={srv.token}")
        print(f'export PATH="{VENV_BIN}:$PATH"', flush=True)
        print(f"dev-server: log in {srv.log_path}; Ctrl-C stops the server", file=sys.stderr)
        return srv.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        print("dev-server: stopping", file=sys.stderr)
        srv.stop()
        if not wait_for(lambda: not plugin_pids(srv), timeout=5):
            print(f"dev-server: killing leftover plugin processes {plugin_pids(srv)}", file=sys.stderr)
            kill_plugins(srv)


if __name__ == "__main__":
    sys.exit(main())
