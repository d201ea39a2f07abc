#!/usr/bin/env bash
# Build what ./scripts/e2e-xen boots: the Xen hypervisor image, a dom0
# initramfs and a guest initramfs, each with Debian's Python 3.11 and Ballast
# installed from the working tree.
#
# Usage: e2e/build-images.sh WORKDIR
# Needs (Debian 12): xen-hypervisor-4.17-amd64, linux-image-amd64,
# busybox-static, cpio, xen-utils-4.17, xenstore-utils, python3.11, and the
# project's .venv (its pip fetches the wheels).
#
# Outputs in WORKDIR: xen (multiboot ELF), vmlinuz, dom0-initrd.gz,
# guest-initrd.gz. The trees they were packed from stay in WORKDIR/build for
# inspection. The pruned standard library and the third-party packages are
# cached in WORKDIR/cache, keyed by the interpreter and by the exact
# dependency versions; Ballast itself is installed afresh every time.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:?usage: build-images.sh WORKDIR}
mkdir -p "$work"
work=$(cd "$work" && pwd)
build=$work/build
cache=$work/cache
py=/usr/bin/python3.11                  # Debian's interpreter: its ABI matches its stdlib
venv_py=$repo/.venv/bin/python
xen_bin=/usr/lib/xen-4.17/bin
multiarch=/lib/x86_64-linux-gnu

log() { echo "build-images: $*" >&2; }

# The newest kernel that has both an image and its modules.
kver=""
for dir in $(ls -d /lib/modules/*/ 2>/dev/null | sort -V); do
    candidate=$(basename "$dir")
    [ -f "/boot/vmlinuz-$candidate" ] && kver=$candidate
done
[ -n "$kver" ] || { log "no /boot/vmlinuz-* with modules"; exit 1; }

rm -rf "$build"
mkdir -p "$build" "$cache"

# --- helpers -------------------------------------------------------------------

# copy_with_libs ROOT FILE... : copy executables or shared objects and every
# library they link against, keeping their paths.
copy_with_libs() {
    local root=$1; shift
    local f lib
    for f in "$@"; do
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
    done
    for lib in $(ldd "$@" 2>/dev/null | awk '/=> \//{print $3} /^\s*\/lib64/{print $1}' | sort -u); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# base_root ROOT : busybox, the directory skeleton, the loader.
base_root() {
    local root=$1 applet
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,var/log,var/lib,usr/bin,usr/sbin,lib64}
    mkdir -p "$root$multiarch"
    ln -s ../run "$root/var/run"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] && continue
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    # xl needs libgcc_s without linking it; so do some wheels. It is tiny.
    cp -L "$multiarch/libgcc_s.so.1" "$root$multiarch/"
}

# compile_tree DIR SOURCELESS : bytecode for the image's interpreter. With
# SOURCELESS=1 the .py files are dropped (legacy .pyc next to where they were).
compile_tree() {
    local dir=$1 sourceless=$2
    if [ "$sourceless" = 1 ]; then
        "$py" -m compileall -q -b -j0 --invalidation-mode unchecked-hash "$dir" >/dev/null
        find "$dir" -name '*.py' -delete
    else
        "$py" -m compileall -q -j0 --invalidation-mode unchecked-hash "$dir" >/dev/null
    fi
}

# --- the standard library (cached) ------------------------------------------------
# What a program that never prints docs, never runs tests and has no GUI
# needs; sources dropped to keep the initramfs small.
stdlib_excludes=(
    test idlelib tkinter turtledemo turtle.py ensurepip lib2to3 pydoc_data
    distutils 'config-3.11-*' site-packages dist-packages __pycache__ venv
    curses dbm lib-dynload
)
stdlib_key=$( { "$py" -c 'import sys; print(sys.version)'; echo "${stdlib_excludes[*]}"; } \
    | sha256sum | cut -c1-16)
stdlib=$cache/stdlib-$stdlib_key
if [ ! -d "$stdlib" ]; then
    log "compiling the standard library"
    args=()
    for pat in "${stdlib_excludes[@]}"; do args+=(--exclude="./$pat"); done
    mkdir -p "$stdlib.tmp"
    (cd /usr/lib/python3.11 && tar cf - "${args[@]}" --exclude='__pycache__' .) \
        | tar xf - -C "$stdlib.tmp"
    compile_tree "$stdlib.tmp" 1
    mv "$stdlib.tmp" "$stdlib"
fi

# --- Ballast from the working tree ------------------------------------------------
# A copy of the tree as git sees it (tracked and new files, not ignored ones),
# so pip builds exactly what is being tested without writing into the checkout.
log "copying the working tree"
mkdir -p "$build/src"
(cd "$repo" && git ls-files -z -c -o --exclude-standard -- pyproject.toml README.md \
    orchestrator agents migrations | xargs -0 cp --parents -t "$build/src" 2>/dev/null) || true
# git ls-files also lists tracked files deleted in the tree; cp skips those
# (hence || true), so check that the essentials arrived.
[ -f "$build/src/pyproject.toml" ] && [ -d "$build/src/orchestrator" ] \
    || { log "could not copy the working tree"; exit 1; }

# The images get the same dependency versions as the .venv the tests ran with.
"$venv_py" -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -v '^ballast' >"$build/constraints.txt"

# requirements NAME... : those of Ballast's declared dependencies (all when none named).
requirements() {
    "$venv_py" - "$build/src/pyproject.toml" "$@" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
wanted = sys.argv[2:]
for dep in deps:
    if not wanted or re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower() in wanted:
        print(dep)
PY
}

# pip_target DIR ARGS... : install into a plain directory, no bytecode.
pip_target() {
    local dir=$1; shift
    "$venv_py" -m pip install -q --disable-pip-version-check --no-warn-script-location \
        --no-compile -c "$build/constraints.txt" --target "$dir" "$@" >"$build/pip.log" 2>&1 \
        || { cat "$build/pip.log" >&2; log "pip install failed"; exit 1; }
    rm -rf "$dir/bin"  # console scripts with the venv's shebang: the images have their own
}

# deps_dir NAME REQ... : third-party packages for one image, cached by the
# exact requirement list and pinned versions, bytecode only.
deps_dir() {
    local name=$1; shift
    local key dir
    key=$( { printf '%s\n' "$@"; cat "$build/constraints.txt"; "$py" -V; } | sha256sum | cut -c1-16)
    dir=$cache/deps-$name-$key
    if [ ! -d "$dir" ]; then
        log "installing the $name image's dependencies: $*"
        rm -rf "$dir.tmp"
        pip_target "$dir.tmp" "$@"
        compile_tree "$dir.tmp" 1
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# site_dir NAME DEPS_DIR : the image's dist-packages: cached dependencies plus
# Ballast from the copied tree (with sources: tracebacks, and Alembic reads
# migrations as source).
site_dir() {
    local name=$1 deps=$2 site=$build/site-$1
    cp -a "$deps" "$site"
    pip_target "$build/ballast-$name" --no-deps "$build"/wheel/*.whl
    cp -a "$build/ballast-$name/." "$site/"
    # Migration scripts live next to the orchestrator package; a wheel that
    # does not carry them gets them from the working tree.
    if [ -d "$build/src/migrations" ] && [ ! -d "$site/migrations" ]; then
        cp -a "$build/src/migrations" "$site/migrations"
    fi
    compile_tree "$site/orchestrator" 0
    compile_tree "$site/agents" 0
    [ ! -d "$site/migrations" ] || compile_tree "$site/migrations" 0
    echo "$site"
}

mapfile -t dom0_reqs < <(requirements)
if [ -f "$build/src/agents/main.py" ]; then
    # The stand-alone agent (`ballast-agent`, agents.main) needs only pyxs.
    mapfile -t guest_reqs < <(requirements pyxs)
else
    # Without it the agent starts through the `ballast` CLI.
    mapfile -t guest_reqs < <(requirements pyxs typer)
fi
log "installing Ballast from the working tree"
"$venv_py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$build/wheel" "$build/src" \
    >"$build/pip.log" 2>&1 || { cat "$build/pip.log" >&2; log "building the wheel failed"; exit 1; }
deps_dom0=$(deps_dir dom0 "${dom0_reqs[@]}")
deps_guest=$(deps_dir guest "${guest_reqs[@]}")
site_dom0=$(site_dir dom0 "$deps_dom0")
site_guest=$(site_dir guest "$deps_guest")

# --- staging --------------------------------------------------------------------

# stage_python ROOT SITE DYNLOAD_EXCLUDE_REGEX
stage_python() {
    local root=$1 site=$2 drop=$3
    copy_with_libs "$root" "$py"
    ln -sf python3.11 "$root/usr/bin/python3"
    mkdir -p "$root/usr/lib/python3.11/lib-dynload" "$root/usr/lib/python3"
    cp -a "$stdlib/." "$root/usr/lib/python3.11/"
    local so mods=() ext=()
    for so in /usr/lib/python3.11/lib-dynload/*.so; do
        if ! basename "$so" | grep -Eq "$drop"; then mods+=("$so"); fi
    done
    copy_with_libs "$root" "${mods[@]}"
    cp -a "$site" "$root/usr/lib/python3/dist-packages"
    # Shared libraries the wheels' extension modules link against.
    mapfile -t ext < <(find "$site" -name '*.so*' -type f)
    if [ ${#ext[@]} -gt 0 ]; then
        copy_with_libs "$build/extlibs" "${ext[@]}"
        local d
        for d in "$multiarch" "/usr$multiarch"; do
            [ ! -d "$build/extlibs$d" ] || { mkdir -p "$root$d"; cp -an "$build/extlibs$d/." "$root$d/"; }
        done
        rm -rf "$build/extlibs"
    fi
}

# stage_modules ROOT MODULE... : kernel modules with their dependencies, and
# ROOT/lib/modules/load-order listing them in an order insmod accepts.
stage_modules() {
    local root=$1; shift
    mkdir -p "$root/lib/modules"
    "$venv_py" - "/lib/modules/$kver" "$root/lib/modules" "$@" <<'PY'
import shutil, sys
from pathlib import Path
base, out, wanted = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
deps = {}
for line in (base / "modules.dep").read_text().splitlines():
    mod, _, rest = line.partition(":")
    deps[Path(mod).name.removesuffix(".ko")] = (mod, rest.split())
order: list[str] = []
def visit(name: str) -> None:
    if name in order:
        return
    for dep in deps[name][1]:
        visit(Path(dep).name.removesuffix(".ko"))
    order.append(name)
for name in wanted:
    visit(name)
for name in order:
    shutil.copy(base / deps[name][0], out / f"{name}.ko")
(out / "load-order").write_text("\n".join(order) + "\n")
PY
}

# The harness's own scripts, shared by both images.
stage_e2e() {
    local root=$1
    mkdir -p "$root/e2e"
    cp "$repo"/e2e/*.py "$root/e2e/"
    compile_tree "$root/e2e" 0
}

# `ballast` and `ballast-agent` launchers in PATH, as the console scripts would be.
stage_launchers() {
    local root=$1
    printf '#!/usr/bin/python3\nimport sys\nfrom orchestrator.cli.main import main\nsys.exit(main())\n' \
        >"$root/usr/bin/ballast"
    printf '#!/usr/bin/python3\nimport sys\nfrom agents.main import main\nsys.exit(main())\n' \
        >"$root/usr/bin/ballast-agent"
    chmod +x "$root/usr/bin/ballast" "$root/usr/bin/ballast-agent"
}

stage_xenstore_tools() {
    local root=$1 t
    copy_with_libs "$root" /usr/bin/xenstore
    for t in chmod exists list ls read rm watch write; do
        ln -sf xenstore "$root/usr/bin/xenstore-$t"
    done
}

pack() {
    local root=$1 out=$2
    (cd "$root" && find . | LC_ALL=C sort | cpio -H newc -o --quiet | gzip -1 >"$out")
}

# Extension modules neither image uses (tests, GUIs, audio, NIS).
unused_dynload='^(_test|_xx|xxlimited|_ctypes_test|audioop|ossaudiodev|nis|_curses|_dbm|readline|_tkinter)'

########## guest ##########
log "building the guest image"
groot=$build/guest-root
base_root "$groot"
# The agent needs neither TLS, hashing nor SQLite.
stage_python "$groot" "$site_guest" "$unused_dynload|^(_ssl|_hashlib|_sqlite3)"
stage_launchers "$groot"
stage_xenstore_tools "$groot"
stage_e2e "$groot"
install -m 0755 "$repo/e2e/guest-init.sh" "$groot/init"
pack "$groot" "$work/guest-initrd.gz"

########## dom0 ##########
log "building the dom0 image"
droot=$build/dom0-root
base_root "$droot"
stage_python "$droot" "$site_dom0" "$unused_dynload"
stage_launchers "$droot"
stage_xenstore_tools "$droot"
copy_with_libs "$droot" "$xen_bin/xl" "$xen_bin/oxenstored" "$xen_bin/xenstored" \
    "$xen_bin/xenconsoled" "$xen_bin/xen-init-dom0" "$xen_bin/libxl-save-helper" \
    "$xen_bin/xenstore-control"
ln -s ../lib/xen-4.17/bin/xl "$droot/usr/sbin/xl"
mkdir -p "$droot"/{etc/xen,var/lib/xen,var/lib/xenstored,var/log/xen/console,guest}
cp /etc/xen/oxenstored.conf /etc/xen/xl.conf "$droot/etc/xen/"
# Ballast, not xl, decides guest memory: xl must not balloon dom0 down.
sed -i 's/^#\?autoballoon=.*/autoballoon="off"/' "$droot/etc/xen/xl.conf"
# Xen's backend drivers for dom0, and virtio for the results disk.
stage_modules "$droot" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs virtio_pci virtio_blk
cp "/boot/vmlinuz-$kver" "$droot/guest/vmlinuz"
cp "$work/guest-initrd.gz" "$droot/guest/initrd.gz"
stage_e2e "$droot"
# The controller's configuration and its history database, prepared with
# the real `ballast db upgrade` and `ballast policy set --host` here rather
# than in dom0, where each Python start-up is slow.
"$venv_py" "$repo/e2e/dom0_run.py" --provision "$droot" --ballast "$repo/.venv/bin/ballast" \
    || { log "could not provision the controller"; exit 1; }
install -m 0755 "$repo/e2e/dom0-init.sh" "$droot/init"
pack "$droot" "$work/dom0-initrd.gz"

zcat /boot/xen-4.17-amd64.gz >"$work/xen"
cp "/boot/vmlinuz-$kver" "$work/vmlinuz"
log "done: $(du -h "$work/dom0-initrd.gz" | cut -f1) dom0, $(du -h "$work/guest-initrd.gz" | cut -f1) guest"
