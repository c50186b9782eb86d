// The test page's labels in English and Chinese, chosen by the browser's language preferences.

const LABELS = {
  en: {
    title: 'Kimi API test page',
    model: 'Model',
    serverDefault: 'Server default',
    apiKey: 'API key (if the server requires one)',
    sessionNote: 'This page runs on an anonymous session token from the server; a key typed here is used instead.',
    thinking: 'Thinking',
    mode: 'Mode',
    modeSingle: 'Single turn',
    modeMulti: 'Multi-turn',
    modeStream: 'Streaming',
    recent: 'Recent conversations',
    delete: 'Delete “{title}”',
    conversation: 'Conversation',
    empty: 'Send a message to start a conversation.',
    message: 'Message',
    placeholder: 'Type a message. Ctrl+Enter sends, Esc stops.',
    send: 'Send',
    sending: 'Sending…',
    stop: 'Stop',
    clear: 'New conversation',
    you: 'You',
    kimi: 'Kimi',
    offline: 'Offline simulator',
    live: 'Live: Moonshot',
    usage: 'Tokens: {prompt} prompt + {completion} reply = {total}',
    totals: 'This conversation: {total} tokens ({prompt} prompt + {completion} reply)',
    stopped: 'Stopped.',
    interrupted: 'The reply was interrupted.',
    retry: 'Retry',
    thinkingNow: 'Thinking…',
    reasoning: 'Reasoning',
    copy: 'Copy',
    copied: 'Copied',
    replied: 'Kimi replied: {text}',
    missingKey: 'This server requires an API key. Enter it in the “API key” field and send again.',
    invalidKey: 'The server rejected this API key. Check the “API key” field.',
    rateLimitedRetry: 'Too many requests. Try again in {seconds} s.',
    rateLimited: 'Too many requests. Wait a moment and try again.',
    rateLimitOver: 'You can send again.',
    tokenExpired: 'The session expired and could not be renewed. Reload the page.',
    network: 'Cannot reach the server. Check that it is running and that you are online.',
    timeout: 'The server took too long to answer. Try again.',
    failed: 'The request failed: {message} ({code})',
  },
  zh: {
    title: 'Kimi API 测试页',
    model: '模型',
    serverDefault: '服务器默认',
    apiKey: 'API 密钥（服务器要求时填写）',
    sessionNote: '本页使用服务器签发的匿名会话令牌；如在此填写密钥，则改用密钥。',
    thinking: '深度思考',
    mode: '模式',
    modeSingle: '单轮对话',
    modeMulti: '多轮对话',
    modeStream: '流式输出',
    recent: '最近的对话',
    delete: '删除“{title}”',
    conversation: '对话',
    empty: '发送一条消息开始对话。',
    message: '消息',
    placeholder: '输入消息，Ctrl+Enter 发送，Esc 停止。',
    send: '发送',
    sending: '发送中…',
    stop: '停止',
    clear: '新对话',
    you: '你',
    kimi: 'Kimi',
    offline: '离线模拟器',
    live: '在线：Moonshot',
    usage: '用量：提示 {prompt} + 回复 {completion} = {total} tokens',
    totals: '本次对话：共 {total} tokens（提示 {prompt} + 回复 {completion}）',
    stopped: '已停止。',
    interrupted: '回复中断了。',
    retry: '重试',
    thinkingNow: '思考中…',
    reasoning: '思考过程',
    copy: '复制',
    copied: '已复制',
    replied: 'Kimi 回复：{text}',
    missingKey: '此服务器需要 API 密钥。请在“API 密钥”一栏填写后重新发送。',
    invalidKey: '服务器拒绝了这个 API 密钥，请检查“API 密钥”一栏。',
    rateLimitedRetry: '请求过于频繁，请在 {seconds} 秒后重试。',
    rateLimited: '请求过于频繁，请稍后再试。',
    rateLimitOver: '现在可以重新发送了。',
    tokenExpired: '会话已过期且无法续期，请刷新页面。',
    network: '无法连接服务器。请确认服务正在运行、网络连接正常。',
    timeout: '服务器响应超时，请重试。',
    failed: '请求失败：{message}（{code}）',
  },
};

/** 'zh' or 'en': the first of the browser's preferred languages that the page has, else English. */
export const language = (navigator.languages || [navigator.language])
  .map((tag) => tag.toLowerCase().split('-')[0])
  .find((tag) => tag in LABELS) || 'en';

/** The label `key` in the page's language, with `{name}` placeholders filled from `values`. */
export function t(key, values = {}) {
  return LABELS[language][key].replace(/\{(\w+)\}/g, (_, name) => String(values[name]));
}

/** The label `key` split around its `{name}` placeholder: the text before it and after it. */
export function around(key, name) {
  const [before, after = ''] = LABELS[language][key].split(`{${name}}`);
  return [before, after];
}

/** Puts the labels into every element marked with `data-i18n`, `data-i18n-placeholder` or `data-i18n-aria-label`. */
export function applyLabels() {
  document.documentElement.lang = language === 'zh' ? 'zh-CN' : 'en';
  document.title = t('title');
  for (const element of document.querySelectorAll('[data-i18n]')) element.textContent = t(element.dataset.i18n);
  for (const element of document.querySelectorAll('[data-i18n-placeholder]')) element.placeholder = t(element.dataset.i18nPlaceholder);
  for (const element of document.querySelectorAll('[data-i18n-aria-label]')) element.setAttribute('aria-label', t(element.dataset.i18nAriaLabel));
}
