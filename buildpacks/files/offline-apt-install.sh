# berth's offline apt (berth build --offline): installs the Debian packages named as arguments
# from the .deb files in the `debs` folder beside this script, apt resolving their
# dependencies among those files and what is installed. It writes the folder's package index
# itself (no `apt-get update`, no network); on failure it prints one `berth-error:` line.
set -u
dir="$(cd "$(dirname "$0")" && pwd)/debs"
lists=/var/lib/apt/lists
index="$lists/$(printf '%s' "$dir" | tr / _)_._Packages"
mkdir -p "$lists/partial"
: > "$index"
for f in "$dir"/*.deb; do
  [ -e "$f" ] || continue
  dpkg-deb -f "$f" >> "$index" || exit 1
  printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "${f##*/}" "$(stat -c %s "$f")" \
    "$(sha256sum "$f" | cut -d ' ' -f 1)" >> "$index"
done
echo "deb [trusted=yes] file:$dir ./" > /tmp/berth-offline.list
if ! apt-get install -y -qq --no-install-recommends -o Dir::Etc::SourceList=/tmp/berth-offline.list \
    -o Dir::Etc::SourceParts=- "$@" > /tmp/berth-apt.log 2>&1; then
  cat /tmp/berth-apt.log
  why=$(grep -E '^E: |Depends: ' /tmp/berth-apt.log | grep -v 'Unable to correct problems' \
    | sed -e 's/^E: //' -e 's/^ *//' | head -n 3 | tr '\n' ';' | sed -e 's/;$//' -e 's/;/; /g')
  echo "berth-error: apt: ${why:-apt-get install $* failed} (not in the offline Debian packages)"
  exit 1
fi
rm -rf /var/lib/apt/lists/* /tmp/berth-offline.list /tmp/berth-apt.log
