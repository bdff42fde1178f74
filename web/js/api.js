// The engine's HTTP API, the same one bots use (/openapi.json). The session is an HttpOnly
// cookie set by POST /api/v1/sessions; the app never sees the secret.

/** An error answer of the API: `{"error": "...", "field"?: "..."}`. */
export class ApiError extends Error {
  constructor(status, message, field, retryAfter) {
    super(message);
    this.status = status;
    this.field = field || null;
    this.retryAfter = retryAfter || null;
  }
}

/** Calls the API; resolves to the JSON answer (or null for 204), throws ApiError. */
export async function api(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(`/api/v1${path}`, init);
  } catch (e) {
    throw new ApiError(0, 'The engine cannot be reached. Is it running?');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!res.ok) {
    const message = (json && json.error) || text || `${res.status} ${res.statusText}`;
    const err = new ApiError(res.status, message, json && json.field, res.headers.get('retry-after'));
    if (res.status === 401 && !path.startsWith('/sessions')) {
      window.dispatchEvent(new CustomEvent('gridshare:signed-out'));
    }
    throw err;
  }
  return json;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body ?? {});
