#!/bin/sh
# build_rootfs.sh OUT.tar.gz WHEEL_DIR PYTHON REQUIREMENT...
#
# Runs on the controller (a Debian 12 host, like the guests), for molecule prepare. No image
# registry is reachable, so the inference container image is a root filesystem made here and
# `docker import`ed in the guest:
#   - Debian 12's own Python 3.11 and the shared libraries it and OpenVINO need, unpacked from
#     the Debian archive's packages (apt-get download + dpkg-deb -x; nothing is installed here);
#   - the requirements (hosttune, openvino, numpy, uvicorn) installed offline from WHEEL_DIR with
#     PYTHON's pip into /opt/hosttune/lib (the image runs `python3 -m hosttune` with it on
#     PYTHONPATH);
#   - /etc/passwd and /etc/group with the user the containers run as (5000:5000).
# Prints the size of the tarball.
set -eu
OUT=$1
WHEELS=$2
PYTHON=$3
shift 3

PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib media-types
  libc6 libgcc-s1 gcc-12-base libstdc++6 zlib1g libbz2-1.0 liblzma5 libexpat1 libffi8 libssl3
  libcrypt1 libuuid1 libsqlite3-0 libdb5.3 libgdbm6 libncursesw6 libtinfo6 libreadline8
  readline-common libnsl2 libtirpc3 libtirpc-common libgssapi-krb5-2 libkrb5-3 libkrb5support0
  libk5crypto3 libcom-err2 libkeyutils1"

WORK=$(mktemp -d /var/tmp/hosttune-rootfs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$WORK/debs" "$ROOT"
chmod 0755 "$WORK" "$WORK/debs"  # apt-get download drops to the _apt user
# shellcheck disable=SC2086
(cd "$WORK/debs" && apt-get download -q=2 $PACKAGES)
for deb in "$WORK"/debs/*.deb; do
    dpkg-deb -x "$deb" "$ROOT"
done
ln -sf python3.11 "$ROOT/usr/bin/python3"
rm -rf "$ROOT/usr/share/doc" "$ROOT/usr/share/man" "$ROOT/usr/share/locale" "$ROOT/usr/share/lintian" \
       "$ROOT/usr/lib/python3.11/test"

"$PYTHON" -m pip --disable-pip-version-check install --quiet --no-index --find-links "$WHEELS" \
    --target "$ROOT/opt/hosttune/lib" "$@"

# The image serves IR and ONNX models on the CPU: OpenVINO's GPU/NPU plugins, its other frontends
# and the GPU kernel cache are a quarter of the image, and every MiB costs seconds in the guest's
# `docker import` under TCG.
OV=$ROOT/opt/hosttune/lib/openvino/libs
rm -f "$OV"/libopenvino_intel_gpu_plugin.so "$OV"/libopenvino_intel_npu_plugin.so "$OV"/cache.json \
      "$OV"/libopenvino_{tensorflow,tensorflow_lite,pytorch,paddle,jax,gguf}_frontend.so*
find "$ROOT/opt/hosttune/lib" -depth -type d \( -name __pycache__ -o -name tests \) -path '*/numpy/*' -exec rm -rf {} +

mkdir -p "$ROOT/etc" "$ROOT/tmp" "$ROOT/models"
chmod 1777 "$ROOT/tmp"
cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
hosttune:x:5000:5000:hosttune serve:/tmp:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
hosttune:x:5000:
nogroup:x:65534:
EOF
printf 'hosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
# smoke test with the image's own interpreter and libraries
chroot "$ROOT" /usr/bin/python3 -c 'import sys; sys.path.insert(0, "/opt/hosttune/lib"); import openvino, numpy, uvicorn, httptools, simdjson, orjson, hosttune.serve.cli; from hosttune.serve import wire; wire.protocol_class(wire.Limits()); print("rootfs: python", sys.version.split()[0], "openvino", openvino.__version__)'
tar -C "$ROOT" --numeric-owner --owner=0 --group=0 -cf - . | gzip -1 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "rootfs: $(du -sm "$ROOT" | cut -f1) MiB, tarball $(du -sm "$OUT" | cut -f1) MiB"
