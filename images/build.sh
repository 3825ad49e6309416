#!/bin/bash
# Builds the vale test guest: $OUT/vmlinuz and $OUT/initramfs.cpio.gz, from
# Debian 12 packages only (downloaded with apt-get download, unpacked with
# dpkg -x, never installed). Run as root on Debian 12:
#
#     images/build.sh
#
# Environment:
#   VALE_IMAGE_DIR     output folder (default: images/out)
#   VALE_PKTGEN        a pkt-gen binary to put at /bin/pkt-gen (optional;
#                      best statically linked, a glibc-dynamic one also works)
#   SOURCE_DATE_EPOCH  mtime of every file in the image (default 0)
#
# Cached: the build is skipped when the inputs (package versions, this script,
# rootfs/, the pkt-gen binary) hash to the key of the last build. Downloaded
# packages are kept in $OUT/.debs. The initramfs is reproducible (fixed mtimes,
# owners and inode numbers, sorted entries, gzip -n).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${VALE_IMAGE_DIR:-$HERE/out}
PKTGEN=${VALE_PKTGEN:-}
EPOCH=${SOURCE_DATE_EPOCH:-0}
ARCH=x86_64-linux-gnu

# Kernel modules to load, in this order, each after its dependencies (taken
# from the modules' own modinfo `depends=`). Built-in ones are skipped; a
# trailing `?` marks a module that may not exist at all in a given kernel.
MODULES=(
	virtio? virtio_ring? virtio_pci_legacy_dev? virtio_pci_modern_dev? virtio_pci
	failover net_failover virtio_net virtio_console
	pktgen uio uio_pci_generic tun veth llc stp bridge
)
# Packages unpacked into the image's sysroot (binaries plus the libraries
# they need); only the files the binaries resolve to are copied.
SYSPKGS=(iperf3 libiperf0 libsctp1 libssl3 ethtool libmnl0 libc6 libgcc-s1)
BINARIES=(usr/bin/iperf3 sbin/ethtool)

die() {
	echo "images/build.sh: $*" >&2
	exit 1
}
msg() { echo "images: $*" >&2; }

for c in apt-get apt-cache dpkg-deb sha256sum flock cpio gzip; do
	command -v "$c" >/dev/null || die "needs $c (apt-get install $c)"
done
if [[ -n $PKTGEN ]]; then
	[[ -f $PKTGEN ]] || die "VALE_PKTGEN=$PKTGEN: no such file"
	PKTGEN=$(realpath "$PKTGEN")
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# --- resolve package versions ---------------------------------------------------
# One apt-cache call (about 0.4 s here, apt keeps no pkgcache.bin); its answer
# is reused while apt's package lists, dpkg's status and apt's configuration
# are unchanged.
declare -A VER=()
apt_state=$(
	{
		echo "${SYSPKGS[*]}"
		stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* /var/lib/dpkg/status \
			/etc/apt/sources.list* /etc/apt/sources.list.d/* /etc/apt/preferences* \
			/etc/apt/preferences.d/* /etc/apt/apt.conf.d/* 2>/dev/null || true
	} | sha256sum | cut -d' ' -f1
)
if [[ -f $OUT/.resolved && $(head -n1 "$OUT/.resolved") == "$apt_state" ]]; then
	{
		read -r _
		read -r KPKG KVER
		while read -r p v; do VER[$p]=$v; done
	} <"$OUT/.resolved"
	VER[$KPKG]=$KVER
else
	info=$(apt-cache show --no-all-versions linux-image-amd64 busybox-static "${SYSPKGS[@]}") ||
		die "apt-cache show failed (apt-get update?)"
	while read -r p v; do
		[[ -n ${VER[$p]:-} ]] || VER[$p]=$v
	done < <(awk '/^Package:/ { p = $2 } /^Version:/ { print p, $2 }' <<<"$info")
	kdep=$(awk '/^Package: / { f = ($2 == "linux-image-amd64") } f && /^Depends:/ { print; exit }' <<<"$info")
	KPKG=$(grep -o 'linux-image-[0-9][^ ,]*-amd64' <<<"$kdep" | head -n1) ||
		die "cannot resolve linux-image-amd64 to a kernel package ($kdep)"
	KVER=$(sed -n "s/.*$KPKG (= \([^)]*\)).*/\1/p" <<<"$kdep")
	[[ -n $KVER ]] || KVER=${VER[linux-image-amd64]}
	VER[$KPKG]=$KVER
	{
		echo "$apt_state"
		echo "$KPKG $KVER"
		for p in busybox-static "${SYSPKGS[@]}"; do echo "$p ${VER[$p]:-}"; done
	} >"$OUT/.resolved"
fi
KREL=${KPKG#linux-image-}
PKGS=("$KPKG" busybox-static "${SYSPKGS[@]}")
for p in "${PKGS[@]}"; do
	[[ -n ${VER[$p]:-} ]] || { rm -f "$OUT/.resolved"; die "no version for package $p"; }
done

# --- cache key ---------------------------------------------------------------
key=$(
	{
		echo "vale-image 1 epoch=$EPOCH"
		for p in "${PKGS[@]}"; do echo "$p=${VER[$p]}"; done
		echo "modules=${MODULES[*]}"
		cd "$HERE"
		sha256sum build.sh
		find rootfs \( -type f -o -type l \) -printf '%p %m %l\n' | LC_ALL=C sort
		find rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
		if [[ -n $PKTGEN ]]; then echo "pkt-gen $(sha256sum <"$PKTGEN")"; else echo "pkt-gen none"; fi
	} | sha256sum | cut -d' ' -f1
)
if [[ -f $OUT/vmlinuz && -f $OUT/initramfs.cpio.gz && -f $OUT/.key && $(<"$OUT/.key") == "$key" ]]; then
	msg "up to date ($OUT)"
	exit 0
fi
rm -f "$OUT/.key"
start=$SECONDS

# --- download ------------------------------------------------------------------
APTOPT=(-q=2)
[[ $EUID -eq 0 ]] && APTOPT+=(-o APT::Sandbox::User=root)
deb() { # pkg -> path of its .deb for VER[pkg], downloaded once into $OUT/.debs
	local p=$1 v=${VER[$1]} d="$OUT/.debs/$1" f
	f=$(find "$d" -maxdepth 1 -name '*.deb' 2>/dev/null | head -n1)
	if [[ -z $f || ! -f $d/.version || $(<"$d/.version") != "$v" ]]; then
		rm -rf "$d"
		mkdir -p "$d"
		msg "downloading $p=$v"
		(cd "$d" && apt-get "${APTOPT[@]}" download "$p=$v") >&2 ||
			die "apt-get download $p=$v failed (apt-get update?)"
		echo "$v" >"$d/.version"
		f=$(find "$d" -maxdepth 1 -name '*.deb' | head -n1)
		[[ -n $f ]] || die "apt-get download $p=$v left no .deb"
	fi
	echo "$f"
}

W="$OUT/.work"
rm -rf "$W"
trap 'rm -rf "$W"' EXIT
R="$W/root" # the image
S="$W/sys"  # sysroot: binaries and libraries
K="$W/kernel"
mkdir -p "$R" "$S" "$K" "$W/busybox"
umask 022

dpkg-deb -x "$(deb "$KPKG")" "$K"
dpkg-deb -x "$(deb busybox-static)" "$W/busybox"
for p in "${SYSPKGS[@]}"; do dpkg-deb -x "$(deb "$p")" "$S"; done

# --- skeleton, our files -------------------------------------------------------
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib/$ARCH,lib64,etc,proc,sys,dev,tmp,run,root,var/log}
mkdir -p "$R/usr/lib"
ln -s "../../lib/$ARCH" "$R/usr/lib/$ARCH"
cp -R "$HERE/rootfs/." "$R/"
chmod 755 "$R/init" "$R/sbin/vale-agent"
if [[ $EUID -eq 0 ]]; then
	mknod -m 600 "$R/dev/console" c 5 1
	mknod -m 666 "$R/dev/null" c 1 3
fi

# --- kernel and modules ---------------------------------------------------------
MD="$K/lib/modules/$KREL"
[[ -f $K/boot/vmlinuz-$KREL && -d $MD ]] || die "$KPKG has no vmlinuz-$KREL or modules"
declare -A MPATH=() BUILTIN=() STATE=() DEPS=()
while IFS= read -r rel; do
	n=${rel##*/}
	n=${n%%.ko*}
	MPATH[${n//-/_}]=$rel
done < <(cd "$MD" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
if [[ -f $MD/modules.builtin ]]; then
	while IFS= read -r rel; do
		n=${rel##*/}
		n=${n%%.ko*}
		BUILTIN[${n//-/_}]=1
	done <"$MD/modules.builtin"
fi
ko_cat() {
	case $1 in
	*.xz) xz -dc "$1" ;;
	*.zst) zstd -dc "$1" ;;
	*.gz) gzip -dc "$1" ;;
	*) cat "$1" ;;
	esac
}
ORDER=()
visit() { # name
	local n=$1 d deps
	case ${STATE[$n]:-} in
	done) return ;;
	active) die "module dependency cycle through $n" ;;
	esac
	STATE[$n]=active
	ko_cat "$MD/${MPATH[$n]}" >"$W/mod.ko"
	deps=$(tr '\0' '\n' <"$W/mod.ko" | awk -F= '$1 == "depends" && !f { f = 1; print $2 }')
	DEPS[$n]=
	for d in ${deps//,/ }; do
		d=${d//-/_}
		[[ -n ${BUILTIN[$d]:-} ]] && continue
		[[ -n ${MPATH[$d]:-} ]] || die "module $n needs $d, which $KPKG lacks"
		visit "$d"
		DEPS[$n]+=" $d"
	done
	mkdir -p "$(dirname "$R/lib/modules/$KREL/${MPATH[$n]%.ko*}.ko")"
	ko_cat "$MD/${MPATH[$n]}" >"$R/lib/modules/$KREL/${MPATH[$n]%.ko*}.ko"
	STATE[$n]=done
	ORDER+=("$n")
}
SKIPPED=()
for m in "${MODULES[@]}"; do
	n=${m%\?}
	if [[ -n ${BUILTIN[$n]:-} ]]; then
		SKIPPED+=("$n(built-in)")
	elif [[ -n ${MPATH[$n]:-} ]]; then
		visit "$n"
	elif [[ $m == *\? ]]; then
		SKIPPED+=("$n(absent)")
	else
		die "module $n is neither built into nor shipped with $KPKG"
	fi
done
kpath() { echo "${MPATH[$1]%.ko*}.ko"; }
closure() { # name -> all its dependencies, each once
	local d
	for d in ${DEPS[$1]}; do
		echo "$d"
		closure "$d"
	done
}
: >"$R/etc/vale-modules"
: >"$R/lib/modules/$KREL/modules.dep"
for ((i = 0; i < ${#ORDER[@]}; i++)); do
	n=${ORDER[i]}
	kpath "$n" >>"$R/etc/vale-modules"
	# modules.dep for busybox modprobe: every dependency, later-loaded first.
	line="$(kpath "$n"):"
	all=" $(closure "$n" | tr '\n' ' ')"
	for ((j = i - 1; j >= 0; j--)); do
		[[ $all == *" ${ORDER[j]} "* ]] && line+=" $(kpath "${ORDER[j]}")"
	done
	echo "$line" >>"$R/lib/modules/$KREL/modules.dep"
done
rm -f "$W/mod.ko"

# --- busybox ---------------------------------------------------------------------
install -m 755 "$W/busybox/bin/busybox" "$R/bin/busybox"

# --- binaries and exactly the libraries they resolve to ---------------------------
LDSO="$S/lib/$ARCH/ld-linux-x86-64.so.2"
[[ -f $LDSO ]] || die "libc6 has no lib/$ARCH/ld-linux-x86-64.so.2"
LIBPATH="$S/lib/$ARCH:$S/usr/lib/$ARCH"
is_dynamic() { # has a PT_INTERP program header (x86-64 ELF)
	local f=$1 phoff phentsize phnum i
	[[ $(od -An -c -N4 "$f" | tr -d ' ') == 177ELF ]] || die "$f is not an ELF file"
	phoff=$(od -An -t u8 -j 32 -N 8 "$f")
	phentsize=$(od -An -t u2 -j 54 -N 2 "$f")
	phnum=$(od -An -t u2 -j 56 -N 2 "$f")
	for ((i = 0; i < phnum; i++)); do
		(($(od -An -t u4 -j $((phoff + i * phentsize)) -N 4 "$f") == 3)) && return 0
	done
	return 1
}
add_libs() { # binary
	local line lib
	is_dynamic "$1" || return 0
	install -m 755 "$LDSO" "$R/lib/$ARCH/ld-linux-x86-64.so.2"
	ln -sfn "/lib/$ARCH/ld-linux-x86-64.so.2" "$R/lib64/ld-linux-x86-64.so.2"
	"$LDSO" --library-path "$LIBPATH" --list "$1" >"$W/ldd" || die "cannot list the libraries of $1"
	while IFS= read -r line; do
		case $line in
		*'not found'*) die "${1##*/}: ${line# *} (add its package to SYSPKGS)" ;;
		*' => '*)
			lib=${line#*=> }
			lib=${lib% (0x*}
			[[ $lib == "$S"/* ]] || die "${1##*/}: $lib is not from the unpacked packages"
			[[ -f $R/lib/$ARCH/${lib##*/} ]] || install -m 755 "$lib" "$R/lib/$ARCH/${lib##*/}"
			;;
		esac
	done <"$W/ldd"
}
for b in "${BINARIES[@]}"; do
	[[ -f $S/$b ]] || die "no $b in ${SYSPKGS[*]}"
	install -m 755 "$S/$b" "$R/$b"
	add_libs "$R/$b"
done
if [[ -n $PKTGEN ]]; then
	install -m 755 "$PKTGEN" "$R/bin/pkt-gen"
	add_libs "$R/bin/pkt-gen"
fi

# Applet links last: they never replace a real file.
while IFS= read -r a; do
	[[ $a == linuxrc || -e $R/$a || -L $R/$a ]] && continue
	mkdir -p "$(dirname "$R/$a")"
	ln -s /bin/busybox "$R/$a"
done < <("$R/bin/busybox" --list-full)

# --- archive -------------------------------------------------------------------
find "$R" -type d -exec chmod 755 {} +
find "$R" -type f -perm /111 -exec chmod 755 {} +
find "$R" -type f ! -perm /111 -exec chmod 644 {} +
chmod 1777 "$R/tmp"
find "$R" -exec touch -h -d "@$EPOCH" {} +
(cd "$R" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
	cpio --null --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$OUT/initramfs.cpio.gz.tmp"
install -m 644 "$K/boot/vmlinuz-$KREL" "$OUT/vmlinuz.tmp"
touch -d "@$EPOCH" "$OUT/vmlinuz.tmp" "$OUT/initramfs.cpio.gz.tmp"
mv -f "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv -f "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"

{
	echo "kernel $KREL"
	for p in "${PKGS[@]}"; do echo "package $p=${VER[$p]}"; done
	echo "modules ${ORDER[*]}"
	echo "skipped ${SKIPPED[*]:-}"
	echo "pkt-gen ${PKTGEN:-none}"
	echo "size vmlinuz $(stat -c %s "$OUT/vmlinuz")"
	echo "size initramfs.cpio.gz $(stat -c %s "$OUT/initramfs.cpio.gz")"
	echo "size unpacked $(du -sb "$R" | cut -f1)"
	(cd "$OUT" && sha256sum vmlinuz initramfs.cpio.gz)
} >"$OUT/manifest.txt"
echo "$key" >"$OUT/.key"
msg "built $OUT/vmlinuz and $OUT/initramfs.cpio.gz ($KREL) in $((SECONDS - start)) s"
msg "modules: ${ORDER[*]}"
