#!/usr/bin/env python3
"""Live migrations of running QEMU guests through `vmstream relay`.

  relay_test.py VMSTREAM_BINARY [--only NAME]

Each case starts a source QEMU running a guest that keeps writing memory (the
multiboot kernel of qemu_tool.dirtier_kernel, plus 16 MiB of random data
loaded with -device loader), a destination QEMU with `-incoming unix:... -S`,
and the two relays between them:

  source QEMU --migrate unix:--> relay send ==channels==> relay receive --unix:--> destination QEMU

and checks: both relays exit 0, the source is `postmigrate`, the destination's
memory equals the source's (QMP pmemsave of both, from 1 MiB up) and equals
`vmstream extract` of the relay's recording, and the destination runs on after
`cont` (its memory keeps changing). Cases: 7.2 -> 7.2 with 3 data channels and
a recording; 10.0 -> 10.0 with 1 data channel and mutual TLS; 7.2 -> 10.0 with
an am53c974 and the esp rules, which QEMU alone cannot do; QEMU's return path
(capability `return-path` on both QEMUs) carried back through the relays, 7.2
with 1 data channel and 10.0 with 3 and TLS; QEMU multifd as input (10.0 with 2
channels, 10.0 with 3 zstd channels and the return path, 7.2 with 2), each of the
source's connections read as it arrives and the destination fed as many. Then faults: each relay killed
mid-way in turn (the receiving one with a return path open, and with multifd), and
the destination QEMU; the source QEMU
must report `failed` and keep running, the destination QEMU must not run.

Exits 0 on success, 1 on failure; skips (exit 0 with a note) without QEMU.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qemu_tool as qt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_MB = 128
MACHINE = {"7.2": "pc-i440fx-7.2", "10.0": "pc-i440fx-7.2"}


def sha_from_1m(path):
    with open(path, "rb") as f:
        f.seek(1 << 20)
        return hashlib.sha256(f.read()).hexdigest()


def tls_creds(tmp):
    """A CA, and server and client certificates for 127.0.0.1, in QEMU's x509
    directory layout (one directory per side)."""
    d = os.path.join(tmp, "pki")
    os.makedirs(d)

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "2", "-subj", "/CN=relay test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for who, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{who}-key.pem", "-out", f"{who}.csr", "-subj", f"/CN={who}")
        with open(os.path.join(d, f"{who}.ext"), "w") as f:
            f.write(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
                    "basicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-out", f"{who}-cert.pem", "-days", "2", "-extfile", f"{who}.ext")
    sides = {}
    for who in ("server", "client"):
        side = os.path.join(tmp, f"tls-{who}")
        os.makedirs(side)
        for name in ("ca-cert.pem", f"{who}-cert.pem", f"{who}-key.pem"):
            os.link(os.path.join(d, name), os.path.join(side, name))
        sides[who] = side
    return sides


class Case:
    def __init__(self, vmstream, tmp, name, src, dst, channels, extra_args=(), tls=None,
                 rules=None, record=True, return_path=False, multifd=0, compression="none"):
        self.vmstream, self.tmp, self.name = vmstream, tmp, name
        self.return_path = return_path
        self.multifd, self.compression = multifd, compression
        self.src, self.dst, self.channels = src, dst, channels
        self.tls, self.rules, self.record = tls, rules, record
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        kernel = os.path.join(self.dir, "dirtier.mb")
        with open(kernel, "wb") as f:
            f.write(qt.dirtier_kernel())
        blob = os.path.join(self.dir, "blob")
        with open(blob, "wb") as f:
            f.write(random.Random(name).randbytes(16 << 20))
        self.args = ["-kernel", kernel, "-device", f"loader,file={blob},addr={qt.BLOB_ADDR:#x},force-raw=on",
                     *extra_args]
        self.procs = []

    def path(self, p):
        return os.path.join(self.dir, p)

    def start(self):
        self.sproc, self.sqmp = qt.start(self.src, MACHINE[self.src], MEMORY_MB, self.args, [], self.path("src.qmp"))
        incoming = "defer" if self.multifd else f"unix:{self.path('dst.mig')}"
        self.dproc, self.dqmp = qt.start(self.dst, MACHINE[self.dst], MEMORY_MB, self.args,
                                         ["-incoming", incoming, "-S"], self.path("dst.qmp"))
        if self.return_path:
            for q in (self.sqmp, self.dqmp):
                q.cmd("migrate-set-capabilities", capabilities=[{"capability": "return-path", "state": True}])
        if self.multifd:
            # QEMU multifd on both sides: the sending relay takes the source's
            # connections, the receiving relay opens as many to the destination.
            for q in (self.sqmp, self.dqmp):
                qt.multifd_setup(q, self.multifd, self.compression)
            self.dqmp.cmd("migrate-incoming", uri=f"unix:{self.path('dst.mig')}")
        # Let the guest boot and dirty memory.
        booted = time.monotonic()
        while "0x00000000" in self.sqmp.cmd("human-monitor-command",
                                            **{"command-line": f"xp /1wx {qt.DIRTY_START:#x}"}):
            if time.monotonic() - booted > 120:
                raise RuntimeError("the source guest did not start dirtying within 120 s")
            time.sleep(0.05)
        port = qt_free_port()
        recv = [self.vmstream, "relay", "receive", "--listen", f"tcp:127.0.0.1:{port}",
                "--to", f"unix:{self.path('dst.mig')}", "--qmp", f"unix:{self.path('recv.qmp')}"]
        send = [self.vmstream, "relay", "send", "--from", f"unix:{self.path('src.mig')}",
                "--to", f"tcp:127.0.0.1:{port}", "--data-channels", str(self.channels)]
        if self.record:
            send += ["--record", self.path("record.vms")]
        if self.multifd:
            send += ["--multifd-channels", str(self.multifd)]
        if self.tls:
            recv += ["--tls-creds", self.tls["server"]]
            send += ["--tls-creds", self.tls["client"]]
        if self.rules:
            recv += ["--rules", self.rules]
        self.recv = subprocess.Popen(recv, stderr=open(self.path("recv.log"), "w"))
        # The sending relay connects once QEMU has: the receiving one must
        # listen by then (looked up without connecting, which would be a stray).
        wait_for(lambda: listening(port), "the receiving relay to listen")
        self.send = subprocess.Popen(send, stderr=open(self.path("send.log"), "w"))
        self.procs = [self.recv, self.send]
        wait_for(lambda: os.path.exists(self.path("src.mig")), "the sending relay's socket")

    def migrate(self, max_bandwidth=1 << 30):
        self.sqmp.cmd("migrate-set-parameters", **{"max-bandwidth": max_bandwidth})
        self.sqmp.cmd("migrate", uri=f"unix:{self.path('src.mig')}")

    def logs(self):
        out = []
        for name in ("send.log", "recv.log"):
            with open(self.path(name)) as f:
                out.append(f"{name}: {f.read().strip()}")
        return "\n".join(out)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for side in ("s", "d"):
            if hasattr(self, side + "proc"):
                qt.stop(getattr(self, side + "proc"), getattr(self, side + "qmp"))


def guarded(case, run, *args):
    try:
        return run(case, *args)
    finally:
        case.stop()


def qt_free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(port):
    """Whether a TCP socket listens on 127.0.0.1:port (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                return True
    return False


def wait_for(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_case(c):
    c.start()
    t = time.monotonic()
    c.migrate()
    try:
        info = c.sqmp.wait_migration()
    except Exception as err:  # noqa: BLE001 - the relays' logs say why
        raise RuntimeError(f"{err}\n{c.logs()}")
    for p, name in ((c.send, "send"), (c.recv, "receive")):
        try:
            rc = p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"relay {name} did not exit\n{c.logs()}")
        if rc != 0:
            raise RuntimeError(f"relay {name} exited {rc}\n{c.logs()}")
    wait_for(lambda: c.dqmp.cmd("query-migrate").get("status") == "completed", "the destination to complete")
    took = time.monotonic() - t
    status = c.sqmp.cmd("query-status")["status"]
    if status != "postmigrate":
        raise RuntimeError(f"source is {status}, expected postmigrate")
    if c.dqmp.cmd("query-status")["status"] != "paused":
        raise RuntimeError("the destination is not paused (-S) after the migration")
    size = MEMORY_MB << 20
    c.sqmp.cmd("pmemsave", val=0, size=size, filename=c.path("src.mem"))
    c.dqmp.cmd("pmemsave", val=0, size=size, filename=c.path("dst.mem"))
    if sha_from_1m(c.path("src.mem")) != sha_from_1m(c.path("dst.mem")):
        raise RuntimeError("destination memory differs from the source's")
    if c.record:
        r = subprocess.run([c.vmstream, "extract", c.path("record.vms"), "--out", c.path("extract")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"extract of the recording: {r.stderr.strip()}")
        if sha_from_1m(os.path.join(c.path("extract"), "pc.ram.bin")) != sha_from_1m(c.path("dst.mem")):
            raise RuntimeError("the recording's final memory differs from the destination's")
        if c.multifd:
            r = subprocess.run([c.vmstream, "inspect", "--json", c.path("record.vms")],
                               capture_output=True, text=True, check=True)
            got = json.loads(r.stdout).get("multifd", {}).get("channels")
            if got != c.multifd:
                raise RuntimeError(f"the recording holds {got} multifd channels, expected {c.multifd}")
            # The way back gives QEMU's N + 1 streams, channel K by its id.
            back = c.path("back.mig")
            subprocess.run([c.vmstream, "convert", c.path("record.vms"), back, "--to", "qemu"],
                           capture_output=True, check=True)
            missing = [k for k in range(c.multifd) if not os.path.exists(f"{back}.multifd{k}")]
            if missing:
                raise RuntimeError(f"convert --to qemu of the recording wrote no channel {missing}")
    c.dqmp.cmd("cont")
    before = c.dqmp.cmd("human-monitor-command", **{"command-line": f"xp /1wx {qt.DIRTY_START:#x}"})
    wait_for(lambda: c.dqmp.cmd("human-monitor-command", **{"command-line": f"xp /1wx {qt.DIRTY_START:#x}"})
             != before, "the destination guest to run on")
    if c.dqmp.cmd("query-status")["status"] != "running":
        raise RuntimeError("the destination is not running after cont")
    if c.rules:
        with open(c.path("recv.log")) as f:
            log = f.read()
        if "esp version 6 -> 7" not in log:
            raise RuntimeError(f"the receiving relay did not transform esp:\n{log}")
    if c.return_path:
        with open(c.path("send.log")) as f:
            log = f.read()
        if "return path:" not in log:
            raise RuntimeError(f"the sending relay carried no return path:\n{log}")
    ram = info.get("ram", {})
    return f"{took:.2f} s, {ram.get('transferred', 0) >> 20} MiB from QEMU"


def run_kill(c, which):
    """Kills relay `which` mid-way: the source QEMU fails and runs on; the
    destination never runs."""
    c.start()
    c.migrate(max_bandwidth=16 << 20)
    wait_for(lambda: (c.sqmp.cmd("query-migrate").get("ram") or {}).get("transferred", 0) > 8 << 20,
             "the migration to get under way", timeout=60)
    victim = {"send": c.send, "receive": c.recv, "destination": c.dproc}[which]
    victim.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        st = c.sqmp.cmd("query-migrate").get("status")
        if st in ("failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the source QEMU is still {st} after the {which} relay died")
        time.sleep(0.05)
    status = c.sqmp.cmd("query-status")["status"]
    if status != "running":
        raise RuntimeError(f"the source QEMU is {status} after a failed migration, expected running")
    others = {"send": [c.recv], "receive": [c.send], "destination": [c.send, c.recv]}[which]
    for other in others:
        try:
            rc = other.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"a relay did not exit after the {which} died\n{c.logs()}")
        if rc == 0:
            raise RuntimeError(f"a relay exited 0 after the {which} died\n{c.logs()}")
    # The destination QEMU exits on a failed incoming migration, or stays inmigrate.
    if c.dproc.poll() is None:
        dst = c.dqmp.cmd("query-status")["status"]
        if dst == "running":
            raise RuntimeError("the destination QEMU runs a partial VM")
    with open(c.path("send.log" if which != "send" else "recv.log")) as f:
        line = f.read().strip().splitlines()[-1:]
    return f"source {st}, running; other relay exit {rc}: {line[0] if line else ''}"


def main():
    vmstream = sys.argv[1]
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    have = {v: (qt.qemu_version(v) or "").startswith(v + ".") for v in ("7.2", "10.0")}
    if not have["7.2"]:
        print("relay_test: QEMU 7.2 not available; skipped")
        return 0
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tls = tls_creds(tmp)
        disk = os.path.join(tmp, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
        esp = ["-device", "am53c974,id=scsi0", "-drive", f"file={disk},if=none,id=d0,format=qcow2",
               "-device", "scsi-hd,drive=d0,bus=scsi0.0"]
        rules = os.path.join(ROOT, "compat", "qemu", "esp-7.2-to-10.0.toml")
        cases = [
            ("7.2-to-7.2-x3-recorded", lambda: guarded(Case(vmstream, tmp, "a", "7.2", "7.2", 3), run_case)),
            ("10.0-to-10.0-x1-tls", lambda: guarded(Case(vmstream, tmp, "b", "10.0", "10.0", 1, tls=tls), run_case)),
            ("7.2-to-10.0-esp-rules", lambda: guarded(Case(vmstream, tmp, "c", "7.2", "10.0", 2, esp,
                                                            rules=rules), run_case)),
            ("10.0-multifd2-to-10.0-x3-recorded", lambda: guarded(Case(vmstream, tmp, "h", "10.0", "10.0", 3,
                                                                        multifd=2), run_case)),
            ("10.0-multifd3-zstd-to-10.0-x1-return-path", lambda: guarded(
                Case(vmstream, tmp, "i", "10.0", "10.0", 1, multifd=3, compression="zstd", return_path=True),
                run_case)),
            ("7.2-multifd2-to-7.2-x2", lambda: guarded(Case(vmstream, tmp, "j", "7.2", "7.2", 2, multifd=2),
                                                       run_case)),
            ("7.2-to-7.2-x1-return-path", lambda: guarded(Case(vmstream, tmp, "f", "7.2", "7.2", 1,
                                                                return_path=True), run_case)),
            ("10.0-to-10.0-x3-tls-return-path", lambda: guarded(Case(vmstream, tmp, "g", "10.0", "10.0", 3, tls=tls,
                                                                      return_path=True), run_case)),
            ("kill-send", lambda: guarded(Case(vmstream, tmp, "d", "7.2", "7.2", 2), run_kill, "send")),
            ("kill-receive-10.0-multifd", lambda: guarded(Case(vmstream, tmp, "k", "10.0", "10.0", 2, multifd=2),
                                                     run_kill, "receive")),
            ("kill-destination-qemu", lambda: guarded(Case(vmstream, tmp, "l", "7.2", "7.2", 2), run_kill,
                                                      "destination")),
            ("kill-receive-return-path", lambda: guarded(Case(vmstream, tmp, "e", "7.2", "7.2", 2, return_path=True),
                                                         run_kill, "receive")),
        ]
        for name, run in cases:
            if only and name != only:
                continue
            if "10.0" in name and not have["10.0"]:
                print(f"relay_test: {name}: skipped (QEMU 10.0 not available)")
                continue
            try:
                print(f"relay_test: {name}: ok ({run()})", flush=True)
            except Exception as err:  # noqa: BLE001 - report every case
                failed += 1
                print(f"relay_test: {name}: FAIL: {err}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
