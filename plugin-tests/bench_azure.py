"""Distribution time per key version into Azure Key Vault (the HTTPS fake), per RSA size.

Run through scripts/bench-azure. One dev server on 127.0.0.1 with the
plugin pointed at the fake (plugin-tests/fakes/azure_keyvault.py) through
the documented environment overrides. For each RSA size, keys with several
versions are distributed with protection=hsm (BYOK) and software; the
wall time of each `POST keymgmt/kms/<kms>/key/<key>` is divided by its
versions. The plugin logs, for every imported version, the time spent in
our own wrapping code (`wrap_us`: CKM_RSA_AES_KEY_WRAP of the PKCS#8 under
the key-exchange key, plus building the transfer blob) and its whole
import (`total_us`); the share is the summed `wrap_us` over the summed
distribution wall time.

What the rest is: HTTPS round trips to the fake, and above all the fake
generating a 4096-bit key-exchange key per BYOK import run in Python, plus
unwrapping and validating every request. A real vault's latency replaces
those; our wrapping cost does not change.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from fakes import FakeKeyVault
from benchlib import log, timed_post
from harness import MOUNT, BaoServer, cli, install_plugin, kill_plugins

SIZES = ["rsa-2048", "rsa-3072", "rsa-4096"]
LINE = re.compile(r"azure key vault: imported version .*?(?=\n|$)")
FIELD = re.compile(r"\b(key|wrap_us|total_us|protection)=(\S+)")


def imports_in_log(server: BaoServer) -> list[dict[str, str]]:
    out = []
    for line in LINE.findall(server.log_text()):
        out.append(dict(FIELD.findall(line)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=3, help="keys per size and protection")
    parser.add_argument("--versions", type=int, default=4, help="versions per key")
    args = parser.parse_args()

    with FakeKeyVault() as fake:
        env = {
            "KEYMGMT_AZURE_KEYVAULT_ENDPOINT": fake.vault_url,
            "AZURE_AUTHORITY_HOST": fake.authority_url,
            "KEYMGMT_AZURE_IMDS_ENDPOINT": fake.imds_url,
            "KEYMGMT_AZURE_CA_FILE": fake.ca_pem_path,
            "AZURE_TENANT_ID": None, "AZURE_CLIENT_ID": None,
            "AZURE_CLIENT_SECRET": None, "AZURE_ENVIRONMENT": None,
        }
        server = BaoServer(Path(tempfile.mkdtemp(prefix="bench-azure-")), env=env)
        try:
            install_plugin(server)
            creds = fake.credentials
            cli(server, "write", f"{MOUNT}/kms/bench", "provider=azurekeyvault", "key_collection=bench",
                *[f"credentials={k}={v}" for k, v in creds.items()])
            s = requests.Session()
            s.trust_env = False
            s.headers["X-Vault-Token"] = server.token
            base = f"{server.addr}/v1/{MOUNT}"
            # Warm-up: token, TLS session and the plugin's client.
            cli(server, "write", f"{MOUNT}/key/warmup", "type=rsa-2048")
            cli(server, "write", f"{MOUNT}/kms/bench/key/warmup", "purpose=sign", "protection=hsm")

            rows = []
            for protection in ("hsm", "software"):
                for size in SIZES:
                    per_version: list[float] = []
                    names = []
                    for k in range(args.keys):
                        name = f"{size}-{protection}-{k}"
                        cli(server, "write", f"{MOUNT}/key/{name}", f"type={size}")
                        for _ in range(args.versions - 1):
                            cli(server, "write", "-f", f"{MOUNT}/key/{name}/rotate")
                        elapsed = timed_post(s, f"{base}/kms/bench/key/{name}",
                                             {"purpose": "encrypt,decrypt", "protection": protection})
                        per_version.append(elapsed / args.versions)
                        names.append(name)
                        log(f"{name}: {args.versions} versions in {elapsed * 1000:.0f} ms")
                    time.sleep(0.2)  # let the plugin's log lines reach the server log
                    imports = [i for i in imports_in_log(server)
                               if any(i.get("key", "").startswith(n + "-") for n in names)]
                    if len(imports) != args.keys * args.versions:
                        raise RuntimeError(f"expected {args.keys * args.versions} import log lines, got {len(imports)}")
                    wrap = [int(i["wrap_us"]) / 1000 for i in imports]
                    total = [int(i["total_us"]) / 1000 for i in imports]
                    wall = sum(per_version) * args.versions
                    rows.append({
                        "size": size, "protection": protection, "versions": len(imports),
                        "per_version_ms_p50": statistics.median(per_version) * 1000,
                        "per_version_ms_mean": statistics.fmean(per_version) * 1000,
                        "plugin_import_ms_p50": statistics.median(total),
                        "wrap_ms_p50": statistics.median(wrap),
                        "wrap_share_pct": 100 * sum(wrap) / (wall * 1000),
                    })
        finally:
            server.stop()
            kill_plugins(server)
        failures = fake.validation_failures

    print(f"Azure distribution into the HTTPS fake, {args.keys} keys x {args.versions} versions per row "
          f"(purpose encrypt,decrypt; one RSA-HSM 4096 KEK per distribution)")
    header = f"{'type':<9} {'protection':<10} {'versions':>8} {'ms/version p50':>15} {'mean':>8} " \
             f"{'plugin import p50':>18} {'wrap p50':>9} {'wrap share':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        # Software imports send the JWK as is: no wrapping to measure.
        wrap, share = ((f"{r['wrap_ms_p50']:>6.2f} ms", f"{r['wrap_share_pct']:>10.2f}%")
                       if r["protection"] == "hsm" else (f"{'-':>9}", f"{'-':>11}"))
        print(f"{r['size']:<9} {r['protection']:<10} {r['versions']:>8} {r['per_version_ms_p50']:>12.1f} ms "
              f"{r['per_version_ms_mean']:>5.1f} ms {r['plugin_import_ms_p50']:>15.1f} ms {wrap} {share}")
    print(json.dumps(rows), file=sys.stderr)
    if failures:
        print(f"the fake recorded {len(failures)} validation failures", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
