// Every 4xx/5xx response (and `default`) must be `application/problem+json` with the shared
// Problem schema, directly or through a `#/components/responses/...` reference. Runs on the
// unresolved document so that "uses the Problem schema" means the reference, not a look-alike.
const PROBLEM_MEDIA_TYPE = 'application/problem+json';
const PROBLEM_SCHEMA = '#/components/schemas/Problem';
const ERROR_STATUS = /^([45](\d\d|XX)|default)$/;

function unescapePointer(token) {
  return token.replace(/~1/g, '/').replace(/~0/g, '~');
}

function resolveLocal(document, node) {
  let current = node;
  const seen = new Set();
  while (current && typeof current === 'object' && typeof current.$ref === 'string') {
    const ref = current.$ref;
    if (!ref.startsWith('#/') || seen.has(ref)) {
      return undefined;
    }
    seen.add(ref);
    current = ref
      .slice(2)
      .split('/')
      .map(unescapePointer)
      .reduce((value, key) => (value && typeof value === 'object' ? value[key] : undefined), document);
  }
  return current;
}

export default (responses, options, context) => {
  if (!responses || typeof responses !== 'object') {
    return [];
  }
  const [, route, method] = context.path;
  const allowed = new Set(options?.allow ?? []);
  const document = context.document.data;
  const results = [];
  for (const [status, response] of Object.entries(responses)) {
    if (!ERROR_STATUS.test(status) || allowed.has(`${String(method).toUpperCase()} ${route} ${status}`)) {
      continue;
    }
    const where = [...context.path, status];
    const resolved = resolveLocal(document, response);
    const content = resolved?.content;
    const mediaTypes = content && typeof content === 'object' ? Object.keys(content) : [];
    if (mediaTypes.length !== 1 || mediaTypes[0] !== PROBLEM_MEDIA_TYPE) {
      results.push({
        message: `${status} must have exactly one media type, ${PROBLEM_MEDIA_TYPE} (found: ${mediaTypes.join(', ') || 'none'}).`,
        path: where,
      });
      continue;
    }
    const schema = content[PROBLEM_MEDIA_TYPE]?.schema;
    if (!schema || schema.$ref !== PROBLEM_SCHEMA) {
      results.push({ message: `${status} must use the schema ${PROBLEM_SCHEMA}.`, path: where });
    }
  }
  return results;
};
