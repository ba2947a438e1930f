#!/usr/bin/env bash
# Replaces the vendored whisper.cpp source (./whisper.cpp) with a release tarball, keeping only
# what the library build needs: the CMake files, whisper/parakeet sources and headers, ggml with
# the CPU backend and the GPU backends whisper-rs-sys has features for, and the LICENSE.
# No models, examples, tests, other-language bindings or CI files.
#   update-whisper-cpp.sh whisper.cpp-vX.Y.Z.tar.gz
# Afterwards: regenerate src/bindings.rs and update README.md (see README.md, "Updating").
set -euo pipefail
tarball="$(realpath "$1")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
# GitHub's tarballs have one top directory; a plain export has none.
src="$work"
if [ ! -f "$src/CMakeLists.txt" ]; then src="$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)"; fi
[ -f "$src/include/whisper.h" ] || { echo "no whisper.cpp source in $1" >&2; exit 1; }

# ggml backends kept: the CPU one, and those whisper-rs-sys's features switch on
# (cuda, hipblas, metal, vulkan, intel-sycl, openblas).
backends="ggml-cpu ggml-cuda ggml-hip ggml-metal ggml-vulkan ggml-sycl ggml-blas"

out="$work/out"
mkdir -p "$out/bindings/javascript" "$out/ggml/src"
cp "$src/LICENSE" "$src/CMakeLists.txt" "$out/"
cp -r "$src/cmake" "$src/src" "$src/include" "$out/"
# whisper.cpp's top-level CMakeLists.txt configures this template when built standalone.
cp "$src/bindings/CMakeLists.txt" "$out/bindings/"
cp "$src/bindings/javascript/package-tmpl.json" "$out/bindings/javascript/"
cp -r "$src/ggml/CMakeLists.txt" "$src/ggml/cmake" "$src/ggml/include" "$out/ggml/"
find "$src/ggml/src" -mindepth 1 -maxdepth 1 -type f -exec cp {} "$out/ggml/src/" \;
for b in $backends; do
    if [ -d "$src/ggml/src/$b" ]; then cp -r "$src/ggml/src/$b" "$out/ggml/src/"; fi
done

# Earshot's fixes to whisper.cpp, in order (see README.md, "Patches").
for p in "$here"/patches/*.patch; do
    [ -e "$p" ] || continue
    patch -d "$out" -p1 --no-backup-if-mismatch < "$p"
done

rm -rf "$here/whisper.cpp"
mv "$out" "$here/whisper.cpp"
grep -E 'set\(WHISPER_VERSION_(MAJOR|MINOR|PATCH)' "$here/whisper.cpp/CMakeLists.txt"
