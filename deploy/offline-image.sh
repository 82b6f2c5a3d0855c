#!/usr/bin/env bash
# Build the semalign image on a host that cannot pull images (no registry), from Debian packages
# and a wheelhouse made on this host:
#
#   1. the base image: debootstrap (Debian $SUITE, minbase + python3, python3-venv) from the
#      Debian mirror the host uses, then `docker import` as $BASE_TAG;
#   2. the wheelhouse: `pip download` of deploy/requirements.txt (+ setuptools, wheel; with
#      TORCH=cpu also deploy/requirements-torch.txt) for the base image's Python into
#      .wheelhouse (binary wheels only);
#   3. the project image: deploy/Dockerfile with BASE_IMAGE=$BASE_TAG, the wheels installed with
#      --no-index --find-links (no index reached during the build), tagged $IMAGE.
#
# Then `docker-compose up --abort-on-container-exit --exit-code-from ap` uses $IMAGE as is.
# On a host with a registry none of this is needed: deploy/Dockerfile's default base image is
# python:3.11-slim and `docker-compose build` installs from PyPI.
#
# Environment: SUITE (bookworm), MIRROR (the host's first deb.debian.org-style URI, else
# http://deb.debian.org/debian), BASE_TAG (semalign-base:$SUITE), IMAGE (semalign:latest),
# TORCH (none: the AP and users on encoded latents; cpu: also encoders, needs torch wheels
# from PIP_TORCH_INDEX, default https://download.pytorch.org/whl/cpu), REBUILD_BASE=1,
# PYTHON (the host Python whose pip downloads: python3), SOURCE_DIGEST (an image label,
# org.semalign.source: tests reuse an image built from the same sources).
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=${SUITE:-bookworm}
BASE_TAG=${BASE_TAG:-semalign-base:$SUITE}
IMAGE=${IMAGE:-semalign:latest}
TORCH=${TORCH:-none}
PYTHON=${PYTHON:-python3}
WHEELHOUSE=.wheelhouse   # in the build context, outside deploy/ (never in the image's layers)
PIP_TORCH_INDEX=${PIP_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?$|https?://[^ ]+/debian/? ' | grep -v security | head -1 | tr -d ' ' || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
t0=$(date +%s)

# 1. base image ------------------------------------------------------------------------------
if [ "${REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
    rootfs=$(mktemp -d /tmp/semalign-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "== debootstrap $SUITE from $MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR" >/tmp/semalign-debootstrap.log \
        || { tail -3 /tmp/semalign-debootstrap.log >&2; exit 1; }
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    echo "== docker import $BASE_TAG"
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        -c 'CMD ["python3"]' - "$BASE_TAG" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi
t1=$(date +%s)

# 2. wheelhouse ------------------------------------------------------------------------------
pyver=$(docker run --rm "$BASE_TAG" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
abi="cp${pyver/./}"
# the wheels of an earlier run are kept while the requirements, Python and TORCH are the same
# (the same files keep the image's dependency layer cached: a source change rebuilds only the
# sources' layers)
stamp="$pyver $TORCH $(cat deploy/requirements.txt deploy/requirements-torch.txt | sha256sum | cut -c1-16)"
mkdir -p $WHEELHOUSE
if [ "$(cat $WHEELHOUSE/.stamp 2>/dev/null)" = "$stamp" ] && ls $WHEELHOUSE/*.whl >/dev/null 2>&1; then
    echo "== wheelhouse for Python $pyver ($abi) in $WHEELHOUSE: kept"
else
echo "== wheelhouse for Python $pyver ($abi) in $WHEELHOUSE"
find $WHEELHOUSE -name '*.whl' -delete && rm -f $WHEELHOUSE/.stamp
platforms=()
for p in manylinux_2_36_x86_64 manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 linux_x86_64; do
    platforms+=(--platform "$p")
done
download=("$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all:
    --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none
    "${platforms[@]}" -d $WHEELHOUSE)
"${download[@]}" -r deploy/requirements.txt setuptools wheel
if [ "$TORCH" = cpu ]; then
    "${download[@]}" --extra-index-url "$PIP_TORCH_INDEX" -r deploy/requirements-torch.txt
fi
echo "   $(ls $WHEELHOUSE/*.whl | wc -l) wheels, $(du -sh $WHEELHOUSE | cut -f1)"
echo "$stamp" > $WHEELHOUSE/.stamp
fi
t2=$(date +%s)

# 3. project image ---------------------------------------------------------------------------
echo "== docker build $IMAGE (FROM $BASE_TAG, --no-index)"
labels=()
[ -n "${SOURCE_DIGEST:-}" ] && labels=(--label "org.semalign.source=$SOURCE_DIGEST")
docker build --quiet -f deploy/Dockerfile -t "$IMAGE" "${labels[@]}" \
    --build-arg BASE_IMAGE="$BASE_TAG" --build-arg TORCH="$TORCH" \
    --build-arg WHEELHOUSE=$WHEELHOUSE . >/dev/null
t3=$(date +%s)
echo "== $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')" \
    "(base $((t1 - t0)) s, wheels $((t2 - t1)) s, image $((t3 - t2)) s)"
