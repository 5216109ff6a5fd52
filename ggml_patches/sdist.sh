# Sourced by build_wheel.sh and build_tree.sh: what UPSTREAM names, and the llama-cpp-python sdist it
# names, downloaded once into the cache and checked against UPSTREAM's sha256.
#
# The sourcing script defines $here (this folder), say() and die() (so messages carry its own name).
#   upstream_value KEY            the value of KEY=... in UPSTREAM
#   sdist_fetch PYTHON CACHE_ROOT download (or reuse) CACHE_ROOT/sdist/<sdist file>, check its sha256,
#                                 and set $sdist to its path; PYTHON runs `-m pip download`
#   sdist_extract DEST            extract $sdist into DEST and set $sdist_src to the extracted folder

upstream_value() {
    local v
    v="$(sed -n "s/^$1=//p" "$here/UPSTREAM")"
    [ -n "$v" ] || die "$here/UPSTREAM has no $1= line"
    echo "$v"
}

sdist_fetch() {
    local py="$1" cache_root="$2"
    local version sdist_name sdist_sha256 dl got_sha256
    version="$(upstream_value LLAMA_CPP_PYTHON_VERSION)"
    sdist_name="$(upstream_value LLAMA_CPP_PYTHON_SDIST)"
    sdist_sha256="$(upstream_value LLAMA_CPP_PYTHON_SDIST_SHA256)"
    mkdir -p "$cache_root/sdist"
    sdist="$cache_root/sdist/$sdist_name"
    if [ ! -f "$sdist" ]; then
        say "downloading llama-cpp-python==$version sdist from PyPI"
        # a private download folder and a rename: two scripts downloading at once both publish a whole file
        dl="$(mktemp -d "$cache_root/sdist/.download.XXXXXX")"
        "$py" -m pip download --no-binary :all: --no-deps -d "$dl" "llama-cpp-python==$version" >"$dl/pip.log" 2>&1 ||
            { cat "$dl/pip.log" >&2; rm -rf "$dl"; die "pip download of llama-cpp-python==$version failed (see above)"; }
        [ -f "$dl/$sdist_name" ] || { ls "$dl" >&2; rm -rf "$dl"; die "pip download did not produce $sdist_name"; }
        mv "$dl/$sdist_name" "$sdist"
        rm -rf "$dl"
    fi
    got_sha256="$(sha256sum "$sdist" | cut -d' ' -f1)"
    if [ "$got_sha256" != "$sdist_sha256" ]; then
        die "$sdist has sha256 $got_sha256, UPSTREAM records $sdist_sha256; delete the file to download it again, or update UPSTREAM and the patches together"
    fi
}

sdist_extract() {
    local dest="$1" sdist_name
    sdist_name="$(upstream_value LLAMA_CPP_PYTHON_SDIST)"
    say "extracting $sdist_name"
    tar -xzf "$sdist" -C "$dest"
    sdist_src="$dest/${sdist_name%.tar.gz}"
    [ -d "$sdist_src/vendor/llama.cpp" ] || die "$sdist_name has no vendor/llama.cpp"
}
