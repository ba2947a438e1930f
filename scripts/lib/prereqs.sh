# Shared by scripts/serve and scripts/test (sourced, not run): installs the Debian packages a
# step needs when they are missing, saying first what it installs and why.
#
# need_packages WHY PACKAGE...   installs the missing PACKAGEs (as root, or through sudo)

need_packages() {
    local why=$1
    shift
    local missing=() package
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$package")
        fi
    done
    ((${#missing[@]})) || return 0
    if ! command -v apt-get >/dev/null; then
        echo "error: $why needs ${missing[*]}; install them with your package manager" >&2
        exit 1
    fi
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || {
            echo "error: $why needs ${missing[*]}; run as root or install them" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    echo "installing for $why: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What building whisper.cpp (C++, cmake) and libopus needs. No clang: the whisper.cpp
# bindings are generated once, when it is updated (vendor/whisper-rs-sys/README.md).
BUILD_PACKAGES=(cmake build-essential pkg-config curl ca-certificates)

need_cargo() {
    if [[ -d "$HOME/.cargo/bin" ]]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
    command -v cargo >/dev/null || {
        echo "error: cargo is missing: install a Rust toolchain (https://rustup.rs) first" >&2
        exit 1
    }
}
