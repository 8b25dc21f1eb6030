// Compiles a Motoko actor with npm `motoko` (moc compiled to JavaScript, mo:core bundled), offline.
// node motoko_build.cjs MOTOKO_PACKAGE_DIR MAIN.mo OUT.wasm enhanced|classical
// Writes OUT.wasm and OUT.did. Every .mo file in MAIN's folder (and below) is given to the compiler,
// so that the actor's relative imports (`import Types "types"`) resolve as with moc.
const fs = require('fs');
const path = require('path');
const [pkg, main, out, persistence] = process.argv.slice(2);
const mo = require(pkg);
mo.loadPackage(require(path.join(pkg, 'packages', 'latest', 'core.json')));
if (persistence === 'classical') mo.compiler.gcFlags('classicOP');
const root = path.dirname(path.resolve(main));
const skipped = new Set(['node_modules', '.mops', '.dfx', '.icp', '.git', 'target']);
(function add(dir) {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory() && !skipped.has(entry.name)) add(full);
        else if (entry.isFile() && entry.name.endsWith('.mo')) {
            mo.write(path.relative(root, full), fs.readFileSync(full, 'utf8'));
        }
    }
})(root);
const file = path.relative(root, path.resolve(main));
const problems = mo.check(file).filter((d) => d.severity === 1);
if (problems.length) {
    for (const d of problems) {
        console.error(`${path.join(root, d.source || file)}:${d.range.start.line + 1}: ${d.message}`);
    }
    process.exit(1);
}
const { wasm, candid } = mo.wasm(file, 'ic');
fs.writeFileSync(out, wasm);
fs.writeFileSync(out.replace(/\.wasm$/, '') + '.did', candid);
