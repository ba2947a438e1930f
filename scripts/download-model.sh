#!/usr/bin/env bash
# Fetches a whisper.cpp ggml model (or the Silero VAD model) by name and verifies it.
# The binary does the same on its own (src/models.rs); both read models/CHECKSUMS.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/download-model.sh NAME [DIR]

Downloads the ggml model NAME to DIR/ggml-NAME.bin (DIR defaults to models/ in the
repository) and verifies it before it appears under its final name.

  NAME   a model name from models/CHECKSUMS: tiny, tiny.en, base, base.en, small,
         small.en, medium, medium.en, large-v1, large-v2, large-v3, large-v3-turbo,
         their -q5_1/-q8_0/-q5_0 variants, or silero-v6.2.0 (voice activity detection)
  DIR    where to put the file (created if missing)

Environment:
  EARSHOT_MODEL_MIRROR  a directory or http(s) URL holding ggml-NAME.bin, tried before the
                        hub. Its files are verified against its SHA256SUMS when it has one
                        listing the file, otherwise against the hub's checksum.
  EARSHOT_MODEL_HUB     replaces the public hub: files are fetched from HUB/ggml-NAME.bin.

The download goes to DIR/ggml-NAME.bin.part (DIR/ggml-NAME.bin.mirror.part from a mirror)
first and is renamed only once verified; an interrupted download resumes from that file. A file already at DIR/ggml-NAME.bin
is left alone.
EOF
}

say() { printf '%s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
checksums_file="$repo_root/models/CHECKSUMS"

# Prints "CHECKSUM URL" for a model name, or nothing when it is unknown.
lookup() {
    awk -v name="$1" '$1 == name && $1 !~ /^#/ { print $2, $3; exit }' "$checksums_file"
}

known_names() {
    awk '$1 !~ /^#/ && NF >= 3 { printf "%s ", $1 }' "$checksums_file"
}

is_url() {
    case "$1" in
    http://* | https://*) return 0 ;;
    *) return 1 ;;
    esac
}

# Prints the digest of FILE with ALGO (sha1 or sha256).
digest_of() {
    local algo="$1" file="$2"
    "${algo}sum" -- "$file" | awk '{ print $1 }'
}

# Checks FILE against EXPECTED ("sha1:HEX", "sha256:HEX" or "-"). Returns 1 on a mismatch.
verify() {
    local file="$1" expected="$2" source="$3"
    if [[ "$expected" == "-" ]]; then
        say "warning: no published checksum for $name; keeping it unverified" \
            "(sha256 $(digest_of sha256 "$file"))"
        return 0
    fi
    local algo="${expected%%:*}" want="${expected#*:}"
    case "$algo" in
    sha1 | sha256) ;;
    *) die "unsupported checksum '$expected' for $name in $checksums_file" ;;
    esac
    local got
    got="$(digest_of "$algo" "$file")"
    if [[ "${got,,}" != "${want,,}" ]]; then
        say "error: checksum mismatch for $name from $source: expected $algo $want, got $got"
        return 1
    fi
    say "verified $algo of $(basename -- "$dest") against $source"
}

# Prints the mirror's sha256 for our file ("sha256:HEX"), or nothing if it lists none.
mirror_checksum() {
    local sums="$1" hex
    [[ -s "$sums" ]] || return 0
    hex="$(awk -v f="$file" '{ n = $2; sub(/^\*/, "", n) } n == f { print $1; exit }' "$sums")"
    if [[ -n "$hex" ]]; then printf 'sha256:%s\n' "$hex"; fi
}

# Tries the mirror. Returns 0 when DEST is in place, 2 when the mirror lacks the file.
from_mirror() {
    local mirror="${EARSHOT_MODEL_MIRROR%/}" expected
    # Its own partial file: the mirror's bytes may differ from the hub's, so never resume one with the other.
    local part="$dest.mirror.part"
    local sums="$dest.SHA256SUMS.part"
    rm -f -- "$sums"
    if is_url "$mirror"; then
        curl -fsSL -o "$sums" "$mirror/SHA256SUMS" 2>/dev/null || rm -f -- "$sums"
        say "fetching $file from mirror $mirror"
        if ! curl -fL -C - --retry 2 --progress-bar -o "$part" "$mirror/$file"; then
            rm -f -- "$sums"
            [[ -s "$part" ]] || rm -f -- "$part"
            say "mirror $mirror did not provide $file; trying the hub"
            return 2
        fi
    else
        [[ -d "$mirror" ]] || die "EARSHOT_MODEL_MIRROR=$mirror is neither a directory nor an http(s) URL"
        if [[ ! -f "$mirror/$file" ]]; then
            say "mirror $mirror has no $file; trying the hub"
            return 2
        fi
        if [[ -f "$mirror/SHA256SUMS" ]]; then cp -- "$mirror/SHA256SUMS" "$sums" || die "cannot read $mirror/SHA256SUMS"; fi
        say "copying $file from mirror $mirror"
        cat -- "$mirror/$file" >"$part" || {
            rm -f -- "$part" "$sums"
            die "cannot copy $mirror/$file to $part"
        }
    fi
    expected="$(mirror_checksum "$sums")"
    local source="$mirror/SHA256SUMS"
    rm -f -- "$sums"
    if [[ -z "$expected" ]]; then
        expected="$hub_checksum"
        source="the hub's published checksum (mirror has no SHA256SUMS entry)"
    fi
    if ! verify "$part" "$expected" "$source"; then
        rm -f -- "$part"
        die "refusing $file from mirror $mirror; nothing was written to $dir"
    fi
    mv -f -- "$part" "$dest" || die "cannot rename $part to $dest"
}

from_hub() {
    local url="$hub_url" rc=0
    if [[ -n "${EARSHOT_MODEL_HUB:-}" ]]; then url="${EARSHOT_MODEL_HUB%/}/$file"; fi
    say "fetching $file from $url"
    curl -fL -C - --retry 3 --connect-timeout 15 --progress-bar -o "$part" "$url" || rc=$?
    if [[ $rc -ne 0 ]]; then
        # A complete .part makes the resume request fail (range not satisfiable): accept it if it verifies.
        if [[ -s "$part" && "$hub_checksum" != "-" ]] && verify "$part" "$hub_checksum" "$url" 2>/dev/null; then
            mv -f -- "$part" "$dest"
            return 0
        fi
        [[ -s "$part" ]] || rm -f -- "$part"
        local hint="Set EARSHOT_MODEL_MIRROR to a directory or URL holding $file."
        if [[ -n "${EARSHOT_MODEL_MIRROR:-}" ]]; then
            hint="The mirror EARSHOT_MODEL_MIRROR=$EARSHOT_MODEL_MIRROR has no $file either."
        fi
        case "$rc" in
        5 | 6 | 7 | 28 | 35) die "cannot reach $url (offline?). $hint" ;;
        *) die "download of $url failed (curl exit $rc); a partial file is kept for the next try. $hint" ;;
        esac
    fi
    if ! verify "$part" "$hub_checksum" "$url"; then
        rm -f -- "$part"
        die "refusing $file from $url; nothing was written to $dir"
    fi
    mv -f -- "$part" "$dest" || die "cannot rename $part to $dest"
}

main() {
    case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    "")
        usage >&2
        exit 2
        ;;
    esac
    [[ $# -le 2 ]] || {
        usage >&2
        exit 2
    }
    [[ -f "$checksums_file" ]] || die "missing $checksums_file"

    name="$1"
    dir="${2:-$repo_root/models}"
    local entry
    entry="$(lookup "$name")"
    [[ -n "$entry" ]] || die "unknown model '$name'. Known models: $(known_names)"
    read -r hub_checksum hub_url <<<"$entry"

    file="ggml-$name.bin"
    mkdir -p -- "$dir"
    dest="$dir/$file"
    part="$dest.part"
    if [[ -f "$dest" ]]; then
        say "$dest already exists; nothing to do"
        printf '%s\n' "$dest"
        exit 0
    fi

    if [[ -n "${EARSHOT_MODEL_MIRROR:-}" ]]; then
        local rc=0
        from_mirror || rc=$?
        if [[ $rc -eq 0 ]]; then
            printf '%s\n' "$dest"
            exit 0
        fi
    fi
    from_hub
    printf '%s\n' "$dest"
}

main "$@"
