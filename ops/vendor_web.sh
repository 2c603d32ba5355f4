#!/usr/bin/env bash
# Update the browser libraries the dashboard (/dashboard) and the API reference (/api/docs)
# use. They are committed under service/http/static/vendor/ and shipped with the package;
# nothing is downloaded when the service runs or its tests run.
#
#   ./ops/vendor_web.sh                 # the pinned versions below
#   UPLOT=1.6.32 SWAGGER_UI=5.35.0 ./ops/vendor_web.sh
#
# Needs npm (the npm registry). Each package is fetched with `npm pack` into a temporary
# folder, its integrity checked by npm, and only the files the pages load (and the licence
# texts) are copied. VENDORED.md records what was copied, its version, licence and integrity.
set -euo pipefail
cd "$(dirname "$0")/.."
UPLOT="${UPLOT:-1.6.32}"
SWAGGER_UI="${SWAGGER_UI:-5.35.0}"
VENDOR=service/http/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# pack <package@version>: unpacked into $work/<package>; prints its integrity
pack() {
  local name="${1%@*}"
  mkdir -p "$work/$name"
  (cd "$work/$name" && npm pack --silent --json "$1" >pack.json && tar -xzf ./*.tgz)
  node -e 'const p = require(process.argv[1])[0]; console.log(p.integrity)' "$work/$name/pack.json"
}

# licence <package folder>: the SPDX licence its package.json states
licence() { node -e 'console.log(require(process.argv[1]).license)' "$1/package.json"; }

uplot_integrity="$(pack "uplot@$UPLOT")"
rm -rf "$VENDOR/uplot" && mkdir -p "$VENDOR/uplot"
cp "$work/uplot/package/dist/uPlot.iife.min.js" "$work/uplot/package/dist/uPlot.min.css" \
   "$work/uplot/package/LICENSE" "$VENDOR/uplot/"

swagger_integrity="$(pack "swagger-ui-dist@$SWAGGER_UI")"
rm -rf "$VENDOR/swagger-ui" && mkdir -p "$VENDOR/swagger-ui"
cp "$work/swagger-ui-dist/package/swagger-ui-bundle.js" "$work/swagger-ui-dist/package/swagger-ui.css" \
   "$work/swagger-ui-dist/package/swagger-ui-bundle.js.LICENSE.txt" \
   "$work/swagger-ui-dist/package/LICENSE" "$work/swagger-ui-dist/package/NOTICE" "$VENDOR/swagger-ui/"

cat >"$VENDOR/VENDORED.md" <<MD
# Vendored browser libraries

Copied from the npm registry by \`ops/vendor_web.sh\`; do not edit by hand, run the script.

| folder | npm package | version | licence | npm integrity | files |
| --- | --- | --- | --- | --- | --- |
| \`uplot/\` | [uplot](https://www.npmjs.com/package/uplot) | $UPLOT | $(licence "$work/uplot/package") | \`$uplot_integrity\` | $(cd "$VENDOR/uplot" && ls | sed 's/.*/`&`/' | paste -sd, - | sed 's/,/, /g') |
| \`swagger-ui/\` | [swagger-ui-dist](https://www.npmjs.com/package/swagger-ui-dist) | $SWAGGER_UI | $(licence "$work/swagger-ui-dist/package") | \`$swagger_integrity\` | $(cd "$VENDOR/swagger-ui" && ls | sed 's/.*/`&`/' | paste -sd, - | sed 's/,/, /g') |

The licence texts are the packages' own (\`LICENSE\`, \`NOTICE\`;
\`swagger-ui-bundle.js.LICENSE.txt\` lists the licences of the code bundled into Swagger UI).
MD
echo "vendored uplot $UPLOT and swagger-ui-dist $SWAGGER_UI into $VENDOR"
