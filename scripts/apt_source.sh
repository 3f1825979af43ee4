# Sourced by scripts/gpu_sim.sh and scripts/arm_sim.sh: find_source prints "URI<TAB>KEYRING" of the apt
# source this machine already uses for the release "$codename" (deb822 files first, then one-line lists),
# so that no package-registry address is ever written in this repository.
find_source() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v want="$codename" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uri != "") {
                    print uri "\t" key; found = 1; exit
                }
                types = ""; suites = ""; uri = ""; key = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                field = tolower($1); sub(/:$/, "", field)
                value = $0; sub(/^[^:]*:[ \t]*/, "", value)
                if (field == "types") types = value
                else if (field == "suites") suites = value
                else if (field == "uris") { split(value, u, /[ \t]+/); uri = u[1] }
                else if (field == "signed-by") key = value
            }
            END { if (!found) flush() }
        ' "$f" | head -n 1 | grep . && return 0
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk -v want="$codename" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == want) { print $i "\t"; exit }
            }
        ' "$f" | grep . && return 0
    done
    return 1
}

