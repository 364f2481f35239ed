// An operationId such as `listCandles` must be short camelCase and name exactly one handler:
// `async def list_candles` at the top level of one module of the handlers package, the rule
// mdp/resolver.py (HandlerResolver) applies at start-up. Checked here so that a typo or a
// duplicate fails the lint, not the service's boot.
import * as fs from 'node:fs';
import * as path from 'node:path';

const CAMEL_CASE = /^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]+)*$/;
const PACKAGE = 'handlers';

function repositoryRoot(options) {
  // The ruleset runs from the repository root (the Makefile and the tests cd there); a copied
  // spec elsewhere, as the seeded-defect tests lint, still resolves against that root.
  return path.resolve(options?.root ?? process.cwd());
}

export default (operationId, options) => {
  if (typeof operationId !== 'string') {
    return [{ message: 'operationId must be a string.' }];
  }
  if (!CAMEL_CASE.test(operationId)) {
    return [{ message: `"${operationId}" is not short camelCase (e.g. "listCandles").` }];
  }
  const name = operationId.replace(/[A-Z]/g, (hump) => `_${hump.toLowerCase()}`);
  const directory = path.join(repositoryRoot(options), PACKAGE);
  const definition = new RegExp(`^async[ \\t]+def[ \\t]+${name}[ \\t]*\\(`, 'm');
  const modules = fs
    .readdirSync(directory)
    .filter((file) => file.endsWith('.py'))
    .filter((file) => definition.test(fs.readFileSync(path.join(directory, file), 'utf8')));
  if (modules.length !== 1) {
    const found = modules.length ? modules.map((file) => `${PACKAGE}/${file}`).join(', ') : 'none';
    return [{ message: `"${operationId}": expected one top-level \`async def ${name}\` in ${PACKAGE}/, found ${found}.` }];
  }
  return [];
};
