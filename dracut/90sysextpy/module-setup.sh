#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# sysextpy: merge system and configuration extensions into /sysroot from the initrd, so that the
# real root only has to confirm the merge. Installs sysextpy-sysroot.service, sysextpy-generator
# (which pulls the unit in unless rd.sysextpy=0), the sysextpy package, and a Python interpreter
# with exactly the standard-library modules they import, computed here by python-closure.py and
# installed as byte code only by python-bytecode.py.
#
# Configuration (dracut.conf): sysextpy_openssl=yes|no|auto (default auto) says whether openssl,
# which checks verity signatures, goes into the image; see sysextpy_wants_openssl.

# dracut sets $initdir, $moddir, $hostonly, $dracutsysrootdir and the $systemd*dir variables
# before calling us.
# shellcheck disable=SC2154
#
# The image may be built for another root (dracut --sysroot DIR): as in dracut's own modules, the
# paths here are paths inside that root, files are read at "$dracutsysrootdir$path", and the inst
# helpers copy from there. $dracutsysrootdir is empty for the running system.

# The program sysextpy-sysroot.service runs (the launcher `make install` writes): the first word
# of its ExecStart=, so that the unit and what is installed cannot disagree.
sysextpy_launcher() {
    local _line
    while read -r _line; do
        if [[ $_line == ExecStart=/* ]]; then
            _line=${_line#ExecStart=}
            printf '%s\n' "${_line%% *}"
            return 0
        fi
    done < "${dracutsysrootdir-}$systemdsystemunitdir/sysextpy-sysroot.service"
    return 1
}

# The interpreter a script of the root runs: the first word after "#!" in its first line.
sysextpy_python() {
    local _shebang
    read -r _shebang < "${dracutsysrootdir-}$1" || return 1
    [[ $_shebang == '#!'/* ]] || return 1
    _shebang=${_shebang#'#!'}
    printf '%s\n' "${_shebang%% *}"
}

# dracut carries on after a failed install(); a module that was asked for and cannot work in the
# initrd must stop the build instead, so that it fails here and not at boot.
sysextpy_die() {
    dfatal "sysextpy: $*"
    exit 1
}

# An inst helper failed on programs or libraries. For another root that is mostly $DRACUT_LDD,
# which dracut runs on every program it installs: the build host's ldd, by default, fails on a
# root whose C library is newer than the host's.
sysextpy_cannot_install() {
    if [[ ${dracutsysrootdir-} ]]; then
        sysextpy_die "cannot install $* from $dracutsysrootdir: with --sysroot, dracut finds libraries with" \
            "\$DRACUT_LDD ('${DRACUT_LDD-ldd}'), which has to work on that root's programs (dracut(8))"
    fi
    sysextpy_die "cannot install $*"
}

# Where the program sysextpy_in_root runs sees the image being built.
sysextpy_image_dir() {
    if [[ ${dracutsysrootdir-} ]]; then
        printf '%s\n' /tmp/sysextpy-initramfs
    else
        printf '%s\n' "$initdir"
    fi
}

# Run a program of the root the image is built for. With --sysroot, chrooted into that root, so
# that it is the root's interpreter with the root's standard library and libraries, whatever the
# build host has; in a private mount namespace with /proc, /dev, a scratch /tmp and the image at
# $(sysextpy_image_dir), so that nothing is written into the root and nothing stays mounted.
sysextpy_in_root() {
    if [[ -z ${dracutsysrootdir-} ]]; then
        "$@"
        return
    fi
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private -- /bin/sh -euc '
        root=$1 initdir=$2 image=$3
        shift 3
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs tmpfs "$root/tmp"
        mkdir "$root$image"
        mount --bind "$initdir" "$root$image"
        exec chroot "$root" "$@"
    ' sysextpy-in-root "$dracutsysrootdir" "$initdir" "$(sysextpy_image_dir)" "$@"
}

# Prerequisite check(s) for module.
check() {
    local _launcher
    if ! _launcher=$(sysextpy_launcher 2> /dev/null) \
        || ! [[ -x ${dracutsysrootdir-}$(sysextpy_python "$_launcher") ]]; then
        dinfo "dracut module 'sysextpy' will not be installed: sysextpy-sysroot.service, the program" \
            "it runs or that program's interpreter is missing"
        return 1
    fi
    # Only when asked for (add_dracutmodules+=" sysextpy "): it adds a Python runtime to the
    # initrd. Without it, sysextpy.service merges in the real root instead.
    return 255
}

# Module dependency requirements.
depends() {
    echo systemd
    return 0
}

# Kernel modules the merge needs: overlayfs, loop devices, the image file systems, dm-verity.
installkernel() {
    hostonly='' instmods overlay loop
    hostonly=$(optional_hostonly) instmods -s erofs squashfs ext4 dm-verity
}

# Install the required file(s) and directories for the module in the initramfs.
install() {
    local _launcher _python _generator _closure _file _image _package=""
    local -a _sources=() _libraries=() _modules=()

    # The import closure is computed by running the root's own interpreter: for another root
    # (--sysroot), chrooted into it.
    if [[ ${dracutsysrootdir-} && $EUID -ne 0 ]]; then
        sysextpy_die "building for another root (--sysroot) needs root: the root's interpreter is run" \
            "chrooted into $dracutsysrootdir to find the Python modules to install"
    fi
    _launcher=$(sysextpy_launcher) || sysextpy_die "no ExecStart= in sysextpy-sysroot.service"
    _python=$(sysextpy_python "$_launcher") || sysextpy_die "no interpreter named in $_launcher"
    _generator="$systemdutildir/system-generators/sysextpy-generator"

    # Not inst_simple: it looks for its source on the build host, not in $dracutsysrootdir.
    inst_multiple "$systemdsystemunitdir/sysextpy-sysroot.service" || sysextpy_die "cannot install the unit"
    # inst_script also installs the interpreters named in the first lines. Their libraries are
    # resolved now rather than in dracut's final pass, so that the self-check below can run them.
    # dracut 059 resolves now when DRACUT_RESOLVE_DEPS is set; later dracut (dracut-ng) unless
    # DRACUT_RESOLVE_LAZY is set, and it is set while modules install: without emptying it, the
    # interpreter is not installed before the self-check, which then fails.
    DRACUT_RESOLVE_DEPS=1 DRACUT_RESOLVE_LAZY='' inst_script "$_generator" || sysextpy_cannot_install "$_generator"
    DRACUT_RESOLVE_DEPS=1 DRACUT_RESOLVE_LAZY='' inst_script "$_launcher" || sysextpy_cannot_install "$_launcher"
    # Verity images are opened with it, when the root has it.
    inst_multiple -o veritysetup
    if [[ $hostonly ]]; then
        inst_multiple -H -o "$systemdsystemconfdir/sysextpy-sysroot.service.d/*.conf"
    fi

    # The helper comes on stdin: it is part of the module, which need not be inside the root.
    _closure=$(sysextpy_in_root "$_python" -I - "$_launcher" "$_generator" < "$moddir/python-closure.py") \
        || sysextpy_die "cannot compute the Python modules to install"
    while IFS= read -r _file; do
        case $_file in
            *.so) _libraries+=("$_file") ;;
            *) _sources+=("$_file") ;;
        esac
        if [[ $_file == */sysextpy/__init__.py ]]; then
            _package=${_file%/__init__.py}
        elif [[ $_package && $_file == "$_package"/*.py ]]; then
            _file=${_file##*/}
            _modules+=("sysextpy.${_file%.py}")
        fi
    done <<< "$_closure"
    inst_multiple "${_libraries[@]}" || sysextpy_cannot_install "the Python extension modules"
    # Extension modules are not executable, so neither inst_multiple nor dracut's final pass
    # looks at their libraries (libffi for _ctypes, ...): resolve them explicitly (-R).
    inst_multiple -R "${_libraries[@]}" || sysextpy_cannot_install "the libraries of the extension modules"
    # Byte code only, beside where each source would be, and no sources: the interpreter loads it
    # as it is, without compiling (or writing) on the boot path. See python-bytecode.py for why
    # without column ranges and docstrings, and why hash-checked.
    _image=$(sysextpy_image_dir)
    sysextpy_in_root "$_python" -I -X no_debug_ranges - "$_image" "${_sources[@]}" < "$moddir/python-bytecode.py" \
        || sysextpy_die "cannot compile the Python modules"

    if sysextpy_wants_openssl "$_python" "${_package%/*}"; then
        inst_multiple openssl || sysextpy_cannot_install openssl
    fi

    sysextpy_self_check "$_launcher" "$_python" "$_generator" "${_modules[@]}"
}

# openssl checks the signatures of verity images against the root's verity.d certificates; it is
# about a sixth of what the module adds. Whether it goes in (sysextpy_openssl in dracut.conf):
#   yes   always; the build fails if the root has no openssl;
#   no    never: the initrd then rejects a signed image that its policy lets be "signed" (the
#         default does) unless the kernel checks the signature ("root hash signature rejected:
#         cannot check the signature: 'openssl' not found"), and the real root merges it;
#   auto  (the default) in a generic image (--no-hostonly), which may boot any root; in a hostonly
#         one, when the root being built (the host, or --sysroot) has a certificate the merger
#         would trust, as the merger itself finds them (sysextpy.verity.find_certificates), if the
#         root has openssl.
# Returns 1 when openssl is not wanted, and also for auto when the root has no openssl.
sysextpy_wants_openssl() {
    local _python=$1 _pythondir=$2 _count
    case ${sysextpy_openssl:-auto} in
        yes) return 0 ;;
        no) return 1 ;;
        auto) ;;
        *) sysextpy_die "sysextpy_openssl='$sysextpy_openssl' in the dracut configuration: use yes, no or auto" ;;
    esac
    find_binary openssl > /dev/null || return 1
    [[ $hostonly ]] || return 0
    # shellcheck disable=SC2016 # Python, not shell
    _count=$(sysextpy_in_root "$_python" -I -c '
import sys
sys.path.insert(0, sys.argv[1])
from sysextpy.verity import find_certificates
from sysextpy.view import LiveView
print(len(find_certificates(LiveView("/", {})).certificates))
' "$_pythondir") || sysextpy_die "cannot look for verity.d certificates in the root"
    if ((_count > 0)); then
        dinfo "sysextpy: installing openssl: the root has $_count verity.d certificate(s)"
        return 0
    fi
    dinfo "sysextpy: not installing openssl: the root has no verity.d certificate (sysextpy_openssl=yes adds it)"
    return 1
}

# Run the installed interpreter on the installed files: a missing module fails the build, not the
# boot. Needs chroot(2), hence root; without it the check is skipped with a warning.
sysextpy_self_check() {
    local _launcher=$1 _python=$2 _generator=$3 _out=/tmp/sysextpy-self-check
    shift 3
    if [[ $EUID -ne 0 ]]; then
        dwarn "sysextpy: not running as root, skipping the self-check of the installed Python"
        return 0
    fi
    chroot "$initdir" "$_launcher" --version > /dev/null \
        || sysextpy_die "'$_launcher --version' fails inside the initrd"
    # Every module of the package, imported the way the launcher imports them (the launcher run as
    # the interpreter runs a script: runpy is not installed with what it imports).
    if ! chroot "$initdir" "$_python" -I -c '
import importlib, sys
with open(sys.argv[1], "rb") as f:
    exec(compile(f.read(), sys.argv[1], "exec"), {"__name__": "sysextpy_self_check", "__file__": sys.argv[1]})
for name in sys.argv[2:]:
    importlib.import_module(name)
' "$_launcher" "$@"; then
        sysextpy_die "the sysextpy package cannot be imported inside the initrd"
    fi
    rm -rf -- "${initdir:?}$_out"
    if ! SYSTEMD_IN_INITRD=1 SYSTEMD_PROC_CMDLINE='' chroot "$initdir" "$_generator" "$_out" \
        || ! [[ -L "$initdir$_out/initrd.target.wants/sysextpy-sysroot.service" ]]; then
        rm -rf -- "${initdir:?}$_out"
        sysextpy_die "sysextpy-generator does not work inside the initrd"
    fi
    rm -rf -- "${initdir:?}$_out"
}
