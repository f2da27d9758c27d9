import React from "react";
import Layout from "@theme/Layout";

export default function Home() {
  return (
    <Layout>
      <main className="container margin-vert--lg">
        <h1>Physical AI textbook</h1>
        <p>The book is under “Book” above; the chat is in the corner of every page.</p>
      </main>
    </Layout>
  );
}
