// An operationId such as `handlers.meta.get_root` must name a function that exists:
// `def get_root` or `async def get_root` at the top level of handlers/meta.py. Connexion resolves
// operationIds at start-up, so a typo would otherwise surface only when the service boots.
import * as fs from 'node:fs';
import * as path from 'node:path';

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

function repositoryRoot(options) {
  // The ruleset runs from the repository root (the Makefile and the tests cd there); a copied
  // spec elsewhere, as the seeded-defect tests lint, still resolves against that root.
  return path.resolve(options?.root ?? process.cwd());
}

export default (operationId, options) => {
  if (typeof operationId !== 'string') {
    return [{ message: 'operationId must be a string.' }];
  }
  const parts = operationId.split('.');
  if (parts.length < 2 || !parts.every((part) => IDENTIFIER.test(part))) {
    return [{ message: `"${operationId}" is not a dotted module.function path.` }];
  }
  const functionName = parts.pop();
  const root = repositoryRoot(options);
  const candidates = [
    path.join(root, ...parts) + '.py',
    path.join(root, ...parts, '__init__.py'),
  ];
  const file = candidates.find((candidate) => fs.existsSync(candidate));
  if (file === undefined) {
    return [{ message: `"${operationId}": module ${parts.join('.')} not found (no ${path.relative(root, candidates[0])}).` }];
  }
  const source = fs.readFileSync(file, 'utf8');
  const definition = new RegExp(`^(?:async[ \\t]+)?def[ \\t]+${functionName}[ \\t]*\\(`, 'm');
  if (!definition.test(source)) {
    return [{ message: `"${operationId}": no top-level function ${functionName} in ${path.relative(root, file)}.` }];
  }
  return [];
};
