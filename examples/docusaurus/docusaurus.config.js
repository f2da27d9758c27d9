// A Docusaurus site of one of the test corpora's books with the textbook-chat plugin: what
// tests/browser/test_docusaurus.py builds and drives. The book's text stays in
// ../../../shared/corpora; nothing of it is copied here.
const path = require("path");

module.exports = {
  title: "Physical AI textbook",
  url: "http://127.0.0.1",
  baseUrl: "/book/",
  onBrokenLinks: "warn",
  // The corpora come without their images (and book-b without its code listings).
  markdown: { hooks: { onBrokenMarkdownLinks: "warn", onBrokenMarkdownImages: "ignore" } },
  i18n: { defaultLocale: "en", locales: ["en", "ur"] },
  presets: [
    [
      "classic",
      {
        docs: {
          path: path.resolve(__dirname, process.env.BOOK_DIR || "../../../shared/corpora/book-b"),
          sidebarPath: require.resolve("./sidebars.js"),
        },
        blog: false,
      },
    ],
  ],
  plugins: [
    [
      "docusaurus-plugin-textbook-chat",
      {
        serverUrl: process.env.TEXTBOOK_CHAT_URL || "http://127.0.0.1:8000",
        title: { en: "Ask the book", ur: "کتاب سے پوچھیں" },
      },
    ],
  ],
  themeConfig: {
    navbar: {
      title: "Physical AI",
      items: [
        { type: "docSidebar", sidebarId: "book", label: "Book", position: "left" },
        { type: "localeDropdown", position: "right" },
      ],
    },
  },
};
