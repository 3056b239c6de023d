"""Placeholder: being written."""
import streamlit as st

st.title("sample_weights")
